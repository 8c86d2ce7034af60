//! End to end, operations: the real `signproxy` binary as a child process (`run --config`), with
//! its admin port, metrics, canonical JSON log lines on stderr, signals (SIGTERM drain, SIGHUP
//! reload), connection limits and timeouts, `signproxy health` and `signproxy check`.
//!
//! Each test starts its own process on port 0 (proxy and admin) with its own temp folder; the
//! actual ports come from the `signproxy listening` log line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::proxy::{parse_raw_response, raw_exchange, TIKTOK_APP_KEY, TIKTOK_APP_SECRET};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_signproxy");
const HOST: &str = "open-api.tiktokglobalshop.com";
/// How long any wait for the process (a log line, a metric, an exit) may take before failing.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Harness: the binary as a child process.
// ---------------------------------------------------------------------------------------------

/// A config template for the binary: both ports on 127.0.0.1:0, JSON logs, and the usual
/// placeholders (`@STATE@`, `@CA_FILE@`, `@CONNECT_TO@`). `proxy` and `upstream` are extra lines
/// for those tables (the upstream timeouts default to 2 s / 10 s unless given); `rest` holds the
/// profiles.
fn template(proxy: &str, upstream: &str, rest: &str) -> String {
    let mut timeouts = String::new();
    if !upstream.contains("connect_timeout_ms") {
        timeouts.push_str("connect_timeout_ms = 2000\n");
    }
    if !upstream.contains("request_timeout_ms") {
        timeouts.push_str("request_timeout_ms = 10000\n");
    }
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"@STATE@\"\n{proxy}\n\n\
         [upstream]\nca_file = \"@CA_FILE@\"\nconnect_to = @CONNECT_TO@\n{timeouts}{upstream}\n\n\
         {rest}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n"
    )
}

fn tiktok_profile_with(secret: &str) -> String {
    format!("[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{secret}\"\n")
}

/// `connect_to` as a TOML inline table: every test upstream name, plus `extra` entries.
fn connect_to(upstream: &TestUpstream, extra: &[(String, String)]) -> String {
    let items: Vec<String> = upstream
        .connect_to_entries()
        .iter()
        .chain(extra)
        .map(|(k, v)| format!("{k:?} = {v:?}"))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

fn toml_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\")
}

/// Lines a child wrote to one of its pipes, collected by a reader thread.
#[derive(Clone, Default)]
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    /// Set by the reader thread once the pipe is closed and every line is in.
    closed: Arc<AtomicBool>,
}

impl Lines {
    fn collect(&self, pipe: impl std::io::Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        lines.lines.lock().unwrap().push(line);
                    }
                }
            }
            lines.closed.store(true, Ordering::SeqCst);
        });
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// After the process exited: waits (up to [`WAIT`]) until its pipe is drained, rather than
    /// guessing how long the reader thread needs.
    async fn wait_closed(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.closed.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Removes ANSI colour sequences (the pretty log format uses them).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The running binary. Dropping it kills the process.
struct Binary {
    child: Child,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    ca_path: PathBuf,
    connect_to: String,
    proxy: SocketAddr,
    admin: SocketAddr,
    stdout: Lines,
    stderr: Lines,
}

impl Binary {
    async fn start(template: &str, ca: &TestCa, connect_to: &str) -> Binary {
        Self::start_with_env(template, ca, connect_to, &[]).await
    }

    /// Writes the config, runs `signproxy run --config` and waits for its listening line.
    async fn start_with_env(
        template: &str,
        ca: &TestCa,
        connect_to: &str,
        env: &[(&str, &str)],
    ) -> Binary {
        Self::start_with_limit(template, ca, connect_to, env, None).await
    }

    /// Like `start_with_env`, with the process's open-file limit set to `nofile` when given
    /// (through the shell's `ulimit`, as an operator's unit file would).
    async fn start_with_limit(
        template: &str,
        ca: &TestCa,
        connect_to: &str,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = ca.write_ca_pem(dir.path());
        let config_path = dir.path().join("signproxy.toml");
        let mut cmd = match nofile {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "SIGNPROXY_LOG",
            "SIGNPROXY_CONFIG",
            "SIGNPROXY_STATE_DIR",
            "SIGNPROXY_TEST_UNSET_VAR_XYZ",
            "NO_COLOR",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::fs::write(
            &config_path,
            render(template, dir.path(), &ca_path, connect_to),
        )
        .expect("write config");
        let mut binary = Binary {
            child: cmd.spawn().expect("spawn signproxy"),
            dir,
            config_path,
            ca_path,
            connect_to: connect_to.to_owned(),
            proxy: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            stdout: Lines::default(),
            stderr: Lines::default(),
        };
        binary
            .stdout
            .collect(binary.child.stdout.take().expect("stdout"));
        binary
            .stderr
            .collect(binary.child.stderr.take().expect("stderr"));
        let line = binary
            .wait_for_text(|l| l.contains("signproxy listening"), "the listening line")
            .await;
        let (listen, admin) = listening_addresses(&line);
        binary.proxy = listen.parse().expect("listen address");
        binary.admin = admin.parse().expect("admin address");
        binary
    }

    /// Rewrites the config file from a template (same temp folder, CA and connect_to).
    fn rewrite_config(&self, template: &str) {
        std::fs::write(
            &self.config_path,
            render(template, self.dir.path(), &self.ca_path, &self.connect_to),
        )
        .expect("rewrite config");
    }

    /// Replaces the config file's `[admin] listen = "127.0.0.1:0"` by the port actually bound, so
    /// `signproxy health --config` can find it (the running process does not re-read the file
    /// until SIGHUP).
    fn pin_admin_port_in_config(&self) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let from = "[admin]\nlisten = \"127.0.0.1:0\"";
        assert!(text.contains(from), "{text}");
        let to = format!("[admin]\nlisten = \"{}\"", self.admin);
        std::fs::write(&self.config_path, text.replace(from, &to)).unwrap();
    }

    fn proxy_ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state").join("ca-cert.pem"))
            .expect("signproxy's CA certificate in its state folder")
    }

    /// A reqwest client using signproxy as its proxy for http:// and https:// (trusting
    /// signproxy's own CA inside CONNECT).
    fn client(&self) -> reqwest::Client {
        reqwest_via_proxy(self.proxy, &self.proxy_ca_pem())
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Everything written to stderr so far, one entry per line.
    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// stdout and stderr together.
    fn all_output(&self) -> String {
        let mut all = self.stdout.all();
        all.extend(self.stderr.all());
        all.join("\n")
    }

    /// The stderr lines that are JSON objects.
    fn json_lines(&self) -> Vec<Value> {
        self.stderr_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    fn json_lines_with_message(&self, message: &str) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Waits for a stderr line (ANSI colours removed) matching `pred`; panics with the output
    /// after [`WAIT`] or when the process exits first.
    async fn wait_for_text(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .stderr_lines()
                .iter()
                .map(|l| strip_ansi(l))
                .find(|l| pred(l))
            {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread take in the last lines before reporting.
                self.stderr.wait_closed().await;
                if let Some(line) = self
                    .stderr_lines()
                    .iter()
                    .map(|l| strip_ansi(l))
                    .find(|l| pred(l))
                {
                    return line;
                }
                panic!(
                    "signproxy exited ({status}) before {what}:\n{}",
                    self.all_output()
                );
            }
            if Instant::now() > deadline {
                panic!("waited {WAIT:?} for {what}:\n{}", self.all_output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` JSON lines match `pred`; returns them.
    async fn wait_for_json(
        &mut self,
        count: usize,
        pred: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<Value> = self.json_lines().into_iter().filter(|v| pred(v)).collect();
            if found.len() >= count {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {WAIT:?} for {count} x {what}; got {}:\n{}",
                    found.len(),
                    self.all_output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The canonical `request` line with this request id.
    async fn request_line(&mut self, request_id: &str) -> Value {
        let id = request_id.to_owned();
        self.wait_for_json(
            1,
            move |v| v["message"] == "request" && v["request_id"] == id.as_str(),
            &format!("the request line for {request_id}"),
        )
        .await
        .remove(0)
    }

    /// Waits for the process to exit; panics after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.stdout.wait_closed().await;
                self.stderr.wait_closed().await;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "signproxy did not exit within {timeout:?}:\n{}",
                    self.all_output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// GET on the admin port: status, content type and body.
    async fn admin_get(&self, path: &str) -> (u16, String, String) {
        let resp = admin_client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .expect("admin port answers");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, resp.text().await.unwrap())
    }

    async fn metrics(&self) -> String {
        let (status, _, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the metric `series` satisfies `pred` (absent counts as 0); returns the text.
    async fn wait_for_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            if pred(metric(&text, series).unwrap_or(0.0)) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("waited {WAIT:?} for {series}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn render(template: &str, dir: &Path, ca_path: &Path, connect_to: &str) -> String {
    template
        .replace("@STATE@", &toml_path(&dir.join("state")))
        .replace("@CA_FILE@", &toml_path(ca_path))
        .replace("@CONNECT_TO@", connect_to)
}

/// `listen` and `admin` from the listening line (JSON, or pretty `key=value`).
fn listening_addresses(line: &str) -> (String, String) {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_owned()
        };
        return (field("listen"), field("admin"));
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {line}"))
            .to_owned()
    };
    (field("listen"), field("admin"))
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The value of one series in the Prometheus text, e.g.
/// `signproxy_requests_total{profile="-",host="-",status="403"}` or `signproxy_open_tunnels`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn requests_total(profile: &str, host: &str, status: u16) -> String {
    format!("signproxy_requests_total{{profile=\"{profile}\",host=\"{host}\",status=\"{status}\"}}")
}

/// Runs the binary with `args` (no proxy-related environment) and returns (exit code, stdout,
/// stderr).
async fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("SIGNPROXY_CONFIG")
        .env_remove("SIGNPROXY_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run signproxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header: {:?}", resp.headers()))
        .to_owned()
}

/// A TikTok upstream (signatures checked with `secret`) and the binary in front of it.
async fn tiktok_setup(proxy_extra: &str, upstream_extra: &str) -> (TestCa, TestUpstream, Binary) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let config = template(
        proxy_extra,
        upstream_extra,
        &tiktok_profile_with(TIKTOK_APP_SECRET),
    );
    let bin = Binary::start(&config, &ca, &connect_to(&upstream, &[])).await;
    (ca, upstream, bin)
}

/// Opens a raw CONNECT tunnel to `authority` and reads the proxy's answer head.
async fn open_connect(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads one response head (up to and including the blank line), byte by byte so that nothing
/// after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        assert_eq!(n, 1, "the proxy closed before answering: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the peer closes (EOF or error) or `timeout` passes; returns what was read and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Admin port.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_answers_healthz_readyz_metrics_and_errors() {
    let (_ca, _upstream, bin) = tiktok_setup("", "").await;
    assert_ne!(bin.admin, bin.proxy);

    let (status, content_type, body) = bin.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"status": "ok"})
    );

    // A static-token profile needs nothing to be ready.
    let (status, _, body) = bin.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"]["config"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["upstream_roots"]["ok"], true, "{ready}");
    assert!(
        ready["checks"]["upstream_roots"]["trusted"].as_u64() >= Some(1),
        "{ready}"
    );
    assert!(ready["checks"]["tokens"].is_object(), "{ready}");

    let (status, content_type, body) = bin.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    // (Labelled families show up with their first sample; the plain ones are there at once.)
    for name in [
        "# TYPE signproxy_open_connections gauge",
        "# TYPE signproxy_open_tunnels gauge",
        "signproxy_body_limit_rejections_total 0",
        "signproxy_connections_refused_total 0",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let (status, _, body) = bin.admin_get("/nope").await;
    assert_eq!(status, 404, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "not_found", "{err}");

    let resp = admin_client()
        .post(format!("http://{}/healthz", bin.admin))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let err: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed", "{err}");

    // The proxy port is not the admin port: /healthz there is an origin-form request.
    let raw = raw_exchange(
        bin.proxy,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(parse_raw_response(&raw).0, 400);
}

// ---------------------------------------------------------------------------------------------
// 1 + 2 + 10. Readiness with a managed token, token refresh metrics, `signproxy health`.
// ---------------------------------------------------------------------------------------------

/// A TikTok token endpoint stand-in on `upstream` that answers 503 while `down` is set.
fn tiktok_token_endpoint(upstream: &TestUpstream, down: Arc<AtomicBool>) -> Arc<AtomicUsize> {
    let grants = Arc::new(AtomicUsize::new(0));
    let g = grants.clone();
    upstream.set_handler(move |r: &Received| {
        if r.host_name().as_deref() != Some("auth.tiktok-shops.com") {
            return None;
        }
        if down.load(Ordering::SeqCst) {
            return Some(Behaviour::respond(503, "text/html", b"<html>down</html>"));
        }
        let n = g.fetch_add(1, Ordering::SeqCst) + 1;
        Some(Behaviour::tiktok_grant(
            &format!("TTP_ops_access_{n}"),
            &format!("rt-ops-{n}"),
            86400,
        ))
    });
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_managed_token_and_health_reports_it() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let down = Arc::new(AtomicBool::new(true));
    let grants = tiktok_token_endpoint(&upstream, down.clone());
    let profile = format!(
        "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\nrefresh_token = \"rt-ops-0\"\n"
    );
    let bin = Binary::start(
        &template("", "", &profile),
        &ca,
        &connect_to(&upstream, &[]),
    )
    .await;
    bin.pin_admin_port_in_config();
    let config = bin.config_path.to_string_lossy().into_owned();

    // The token endpoint is down: not ready, and the report says which profile and why.
    let (status, _, body) = bin.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false, "{report}");
    let token = &report["checks"]["tokens"]["tiktok.default"];
    assert_eq!(token["ok"], false, "{report}");
    assert!(
        !token["reason"].as_str().unwrap_or_default().is_empty(),
        "{report}"
    );
    assert_eq!(report["checks"]["upstream_roots"]["ok"], true, "{report}");
    let text = bin
        .wait_for_metric(
            "signproxy_token_refreshes_total{profile=\"tiktok.default\",outcome=\"failure\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(
        metric(
            &text,
            "signproxy_token_refreshes_total{profile=\"tiktok.default\",outcome=\"success\"}"
        ),
        None,
        "{text}"
    );

    // `health` (readiness) fails; `health --live` passes: the process answers.
    let (code, stdout, stderr) = run_cli(&["health", "--config", &config]).await;
    assert_eq!(code, 1, "stdout {stdout}\nstderr {stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).expect("readyz JSON on stdout");
    assert_eq!(printed["ready"], false, "{printed}");
    assert!(stderr.contains("/readyz"), "{stderr}");
    let (code, stdout, stderr) = run_cli(&["health", "--config", &config, "--live"]).await;
    assert_eq!(code, 0, "stdout {stdout}\nstderr {stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["status"],
        "ok"
    );

    // The endpoint comes back: readiness turns on by itself (after the failure backoff).
    down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let (status, _, body) = bin.admin_get("/readyz").await;
        if status == 200 {
            break serde_json::from_str::<Value>(&body).unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never became ready: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(report["ready"], true, "{report}");
    let token = &report["checks"]["tokens"]["tiktok.default"];
    assert_eq!(token["ok"], true, "{report}");
    assert!(
        token["expires_at"].as_u64()
            > Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            ),
        "{report}"
    );
    assert_eq!(grants.load(Ordering::SeqCst), 1);
    let text = bin.metrics().await;
    assert_eq!(
        metric(
            &text,
            "signproxy_token_refreshes_total{profile=\"tiktok.default\",outcome=\"success\"}"
        ),
        Some(1.0),
        "{text}"
    );

    let (code, stdout, stderr) = run_cli(&["health", "--config", &config]).await;
    assert_eq!(code, 0, "stdout {stdout}\nstderr {stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).expect("readyz JSON on stdout");
    assert_eq!(printed["ready"], true, "{printed}");
    let admin = bin.admin.to_string();
    let (code, stdout, _) = run_cli(&["health", "--addr", &admin]).await;
    assert_eq!(code, 0, "{stdout}");

    // Nothing listens there.
    let (code, _, stderr) = run_cli(&["health", "--addr", "127.0.0.1:1"]).await;
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = run_cli(&["health", "--addr", "127.0.0.1:1", "--live"]).await;
    assert_eq!(code, 1, "{stderr}");

    // A request now carries the managed token.
    let resp = bin
        .client()
        .get(format!("http://{HOST}/api/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream
        .requests()
        .into_iter()
        .rfind(|r| r.host_name().as_deref() == Some(HOST))
        .unwrap();
    assert_eq!(r.header_str("x-tts-access-token"), Some("TTP_ops_access_1"));
    assert!(r.signature.ok, "{:?}", r.signature.error);
}

#[tokio::test]
async fn health_without_an_admin_listen_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n{}",
            toml_path(&dir.path().join("state")),
            tiktok_profile_with("s")
        ),
    )
    .unwrap();
    let config = path.to_string_lossy().into_owned();
    for live in [false, true] {
        let mut args = vec!["health", "--config", &config];
        if live {
            args.push("--live");
        }
        let (code, stdout, stderr) = run_cli(&args).await;
        assert_eq!(code, 1, "stdout {stdout}\nstderr {stderr}");
        assert!(stderr.contains("[admin] listen"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Metrics move with requests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_rejections_failures_and_tunnels() {
    let (_ca, upstream, bin) = tiktok_setup("max_body_bytes = 100", "").await;
    let ok_series = requests_total("tiktok.default", HOST, 200);
    let before = bin.metrics().await;
    assert_eq!(metric(&before, &ok_series), None, "{before}");
    assert_eq!(
        metric(&before, "signproxy_body_limit_rejections_total"),
        Some(0.0)
    );

    let client = bin.client();
    for _ in 0..2 {
        let resp = client
            .get(format!("http://{HOST}/api/products?page_size=5"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // 200 bytes over a 100-byte limit.
    let resp = client
        .post(format!("http://{HOST}/api/products"))
        .body(vec![b'x'; 200])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A TikTok query key sent twice cannot be signed.
    let resp = client
        .get(format!("http://{HOST}/api/products?a=1&a=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-signproxy-error"), "bad_request");
    // A host nobody serves.
    let resp = client
        .get("http://not-routed.example/x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(upstream.requests().len(), 2, "only the two good requests");

    // Request counts are written when the response body is done: wait for the last one.
    let text = bin
        .wait_for_metric(&requests_total("-", "-", 403), |v| v == 1.0)
        .await;
    assert_eq!(metric(&text, &ok_series), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, &requests_total("tiktok.default", HOST, 413)),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &requests_total("tiktok.default", HOST, 400)),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("not-routed.example"),
        "a refused host is never a label:\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "signproxy_upstream_duration_seconds_count{profile=\"tiktok.default\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "signproxy_body_limit_rejections_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "signproxy_signing_failures_total{reason=\"bad_request\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // reqwest keeps its connection to the proxy open.
    assert!(
        metric(&text, "signproxy_open_connections") >= Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "signproxy_open_tunnels"), Some(0.0), "{text}");

    // An intercepted CONNECT tunnel counts while it is open.
    let (tunnel, head) = open_connect(bin.proxy, &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    bin.wait_for_metric("signproxy_open_tunnels", |v| v == 1.0)
        .await;
    drop(tunnel);
    let text = bin
        .wait_for_metric("signproxy_open_tunnels", |v| v == 0.0)
        .await;
    assert_eq!(
        metric(&text, "signproxy_connections_refused_total"),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The canonical log line.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_one_canonical_json_line_matching_its_response() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    let client = bin.client();
    let body = r#"{"order_status":"UNPAID","page":1}"#;
    let resp = client
        .post(format!(
            "http://{HOST}/order/202309/orders/search?page_size=20&page_token=tok"
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = header(&resp, "x-signproxy-request-id");
    let response_body = resp.bytes().await.unwrap();
    assert!(upstream.last_request().signature.ok);

    let line = bin.request_line(&id).await;
    let expected = [
        ("level", Value::from("INFO")),
        ("message", "request".into()),
        ("method", "POST".into()),
        ("host", HOST.into()),
        ("path", "/order/202309/orders/search".into()),
        ("profile", "tiktok.default".into()),
        ("status", 200.into()),
        ("upstream_status", 200.into()),
        ("error", "-".into()),
        ("bytes_in", (body.len() as u64).into()),
        ("bytes_out", (response_body.len() as u64).into()),
        ("completed", true.into()),
    ];
    for (key, value) in expected {
        assert_eq!(line[key], value, "{key} in {line}");
    }
    assert!(line["timestamp"].is_string(), "{line}");
    assert!(line["target"].is_string(), "{line}");
    let upstream_ms = line["upstream_ms"].as_f64().expect("upstream_ms");
    let duration_ms = line["duration_ms"].as_f64().expect("duration_ms");
    assert!(upstream_ms >= 0.0 && duration_ms >= upstream_ms, "{line}");
    let raw = bin
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains(&id) && l.contains("\"request\""))
        .unwrap();
    assert!(
        !raw.contains("page_size") && !raw.contains("page_token"),
        "no query: {raw}"
    );

    // Refused before any upstream: no profile, no upstream status, the error code.
    let resp = client
        .get("http://not-routed.example/some/path?q=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let id = header(&resp, "x-signproxy-request-id");
    let error_body = resp.bytes().await.unwrap();
    let line = bin.request_line(&id).await;
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["upstream_status"], -1, "{line}");
    assert_eq!(line["error"], "host_not_allowed", "{line}");
    assert_eq!(line["profile"], "-", "{line}");
    assert_eq!(line["host"], "not-routed.example", "{line}");
    assert_eq!(line["path"], "/some/path", "{line}");
    assert_eq!(line["bytes_out"], error_body.len() as u64, "{line}");
    assert_eq!(line["upstream_ms"], -1.0, "{line}");

    // Inside a CONNECT tunnel, each inner request gets its own line and id.
    let resp = client
        .get(format!("https://{HOST}/inner/path?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let inner_id = header(&resp, "x-signproxy-request-id");
    let inner_body = resp.bytes().await.unwrap();
    let line = bin.request_line(&inner_id).await;
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["host"], HOST, "{line}");
    assert_eq!(line["path"], "/inner/path", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], inner_body.len() as u64, "{line}");

    // One line per request: ids are unique.
    let ids: Vec<String> = bin
        .json_lines_with_message("request")
        .iter()
        .map(|v| v["request_id"].as_str().unwrap().to_owned())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. No secret in the whole binary's output, at trace level.
// ---------------------------------------------------------------------------------------------

const LEAK_APP_SECRET: &str = "LEAKOPS-app-secret-51a9";
const LEAK_REFRESH_TOKEN: &str = "LEAKOPS-tiktok-refresh-0c3e";
const LEAK_EBAY_TOKEN: &str = "v^1.1#LEAKOPS_ebay_static_token";
const LEAK_JWE: &str = "eyJLEAKOPS.jwe-value.9d2";
const LEAK_CLIENT_ID: &str = "LeakOps-App-PRD-1234";
const LEAK_CLIENT_SECRET: &str = "LEAKOPS-client-secret-77f0";
const LEAK_EBAY_REFRESH: &str = "v^1.1#LEAKOPS_ebay_refresh";

fn leak_profiles(app_secret_line: &str) -> String {
    let key = common::keys::RFC9421_ED25519_PRIVATE_PEM;
    format!(
        "[tiktok.default]\napp_key = \"leakops_app\"\n{app_secret_line}\nrefresh_token = \"{LEAK_REFRESH_TOKEN}\"\n\n\
         [ebay.default]\nprivate_key = \"\"\"\n{key}\"\"\"\njwe = \"{LEAK_JWE}\"\naccess_token = \"{LEAK_EBAY_TOKEN}\"\n\n\
         [ebay.managed]\nprivate_key = \"\"\"\n{key}\"\"\"\njwe = \"{LEAK_JWE}\"\nclient_id = \"{LEAK_CLIENT_ID}\"\n\
         client_secret = \"{LEAK_CLIENT_SECRET}\"\nrefresh_token = \"{LEAK_EBAY_REFRESH}\"\n"
    )
}

async fn secrets_stay_out_of_the_output(log_format: &str) {
    use base64::Engine as _;
    let ca = TestCa::new();
    let verifier = Verifier::ByHost(vec![
        (
            HOST.into(),
            Verifier::tiktok("leakops_app", LEAK_APP_SECRET),
        ),
        (
            "api.ebay.com".into(),
            Verifier::ebay(EbayTestKey::rfc9421_ed25519().public.clone()),
        ),
    ]);
    let upstream = TestUpstream::start(&ca, verifier);
    // TikTok: a working token endpoint whose first access token the API then calls expired (so
    // the refresh-and-retry path runs too). eBay (managed): a token endpoint that refuses.
    let grants = Arc::new(AtomicUsize::new(0));
    let g = grants.clone();
    upstream.set_handler(move |r: &Received| {
        let host = r.host_name().unwrap_or_default();
        if host == "auth.tiktok-shops.com" {
            let n = g.fetch_add(1, Ordering::SeqCst) + 1;
            return Some(Behaviour::tiktok_grant(
                &format!("TTP_LEAKOPS_access_{n}"),
                &format!("LEAKOPS-rotated-refresh-{n}"),
                86400,
            ));
        }
        if host == "api.ebay.com" && r.path() == "/identity/v1/oauth2/token" {
            return Some(Behaviour::json(
                400,
                r#"{"error":"invalid_grant","error_description":"the refresh token was revoked"}"#,
            ));
        }
        if r.header_str("x-tts-access-token") == Some("TTP_LEAKOPS_access_1") {
            return Some(Behaviour::tiktok_error(200, 105002, "access token expired"));
        }
        None
    });
    let config = template(
        "max_body_bytes = 100",
        "",
        &leak_profiles(&format!("app_secret = \"{LEAK_APP_SECRET}\"")),
    )
    .replace("format = \"json\"", &format!("format = \"{log_format}\""));
    let mut bin = Binary::start_with_env(
        &config,
        &ca,
        &connect_to(&upstream, &[]),
        &[("SIGNPROXY_LOG", "trace")],
    )
    .await;
    let client = bin.client();

    // Signed, absolute-form and inside CONNECT, both marketplaces.
    for scheme in ["http", "https"] {
        for url in [
            format!("{scheme}://{HOST}/order/202309/orders/search?page_token=abc"),
            format!("{scheme}://api.ebay.com/sell/finances/v1/transaction?limit=1"),
        ] {
            let resp = client.post(&url).body("{\"a\":1}").send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let echo = response_json(resp).await;
            assert_eq!(echo["signature"]["ok"], true, "{echo}");
        }
    }
    assert!(
        grants.load(Ordering::SeqCst) >= 2,
        "the expired token was refreshed"
    );
    // The failing token endpoint, and the error paths.
    let resp = client
        .get("http://api.ebay.com/sell/finances/v1/payout")
        .header("x-signproxy-profile", "ebay.managed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "x-signproxy-error"), "token_unavailable");
    for (url, body, status) in [
        (format!("http://{HOST}/x?a=1&a=2"), String::new(), 400),
        (format!("http://{HOST}/x"), "y".repeat(500), 413),
        ("http://elsewhere.example/x".to_owned(), String::new(), 403),
    ] {
        let resp = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(resp.status(), status, "{url}");
    }
    // Reloads: one good, one whose TOML breaks on the secret's own line.
    bin.signal("HUP");
    bin.wait_for_text(|l| l.contains("config reloaded"), "the reload")
        .await;
    bin.rewrite_config(&config.replace(
        &format!("app_secret = \"{LEAK_APP_SECRET}\""),
        &format!("app_secret = \"{LEAK_APP_SECRET}"),
    ));
    bin.signal("HUP");
    bin.wait_for_text(|l| l.contains("config reload rejected"), "the rejection")
        .await;
    // Still serving, after the reloads.
    let resp = client
        .get(format!("http://{HOST}/after/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    bin.signal("TERM");
    assert!(bin.wait_exit(WAIT).await.success());

    // What the upstream received is what must not be in the output.
    let mut needles: Vec<String> = vec![
        LEAK_APP_SECRET.into(),
        LEAK_REFRESH_TOKEN.into(),
        LEAK_EBAY_TOKEN.into(),
        LEAK_JWE.into(),
        LEAK_CLIENT_SECRET.into(),
        LEAK_EBAY_REFRESH.into(),
        "TTP_LEAKOPS_access_".into(),
        "LEAKOPS-rotated-refresh-".into(),
        base64::engine::general_purpose::STANDARD
            .encode(format!("{LEAK_CLIENT_ID}:{LEAK_CLIENT_SECRET}")),
        common::keys::RFC9421_ED25519_PRIVATE_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect(),
        "access_token=".into(),
        "refresh_token=".into(),
        "app_secret=".into(),
    ];
    let mut signatures = 0;
    for r in upstream.requests() {
        if let Some(sign) = r.query_param("sign") {
            needles.push(sign);
            signatures += 1;
        }
        if let Some(sig) = r.header_str("signature") {
            let value = sig.trim_start_matches("sig1=:").trim_end_matches(':');
            needles.push(value.to_owned());
            signatures += 1;
        }
        if let Some(auth) = r.header_str("authorization") {
            needles.push(auth.to_owned());
        }
    }
    assert!(signatures >= 5, "signed requests reached the upstream");

    let output = strip_ansi(&bin.all_output());
    // The grep is only worth something if the output is the verbose one.
    assert!(output.contains("TRACE"), "trace level is on:\n{output}");
    assert!(output.contains("signproxy listening"));
    assert!(output.contains(HOST) && output.contains("/order/202309/orders/search"));
    assert!(output.contains("token_unavailable") && output.contains("config reload rejected"));
    for needle in &needles {
        if let Some(line) = output.lines().find(|l| l.contains(needle.as_str())) {
            panic!("the output ({log_format}) leaks {needle:?} in:\n{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_binarys_json_output_at_trace_level() {
    secrets_stay_out_of_the_output("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_binarys_pretty_output_at_trace_level() {
    secrets_stay_out_of_the_output("pretty").await;
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_in_flight_request_refuses_new_ones_and_exits_zero() {
    // The answer is held until the checks below are done, however long they take (the grace
    // and the request timeout are far past that).
    let (_ca, upstream, mut bin) =
        tiktok_setup("shutdown_grace_ms = 60000", "request_timeout_ms = 60000").await;
    let (open, held) = gate();
    upstream.set_behaviour(Behaviour::echo().held_until(held));
    let client = bin.client();
    let slow = tokio::spawn(async move {
        let resp = client
            .get(format!("http://{HOST}/slow/one?x=1"))
            .send()
            .await
            .expect("the in-flight request completes");
        let status = resp.status().as_u16();
        (status, response_json(resp).await)
    });
    upstream.wait_for_requests(1, WAIT).await;
    bin.signal("TERM");
    bin.wait_for_json(
        1,
        |v| v["message"] == "shutting down: finishing in-flight requests",
        "the shutdown line",
    )
    .await;
    assert!(!slow.is_finished(), "the slow request is still in flight");
    let refused = TcpStream::connect(bin.proxy).await;
    assert!(
        refused.is_err(),
        "a new connection after SIGTERM must be refused"
    );

    open.send(true).unwrap();
    let (status, echo) = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["path"], "/slow/one", "{echo}");
    assert_eq!(echo["signature"]["ok"], true, "{echo}");
    let exit = bin.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(0), "{}", bin.all_output());
    assert!(
        bin.all_output().contains("signproxy stopped"),
        "{}",
        bin.all_output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_what_is_left_when_the_grace_period_ends() {
    // The upstream never answers (its gate stays shut) and the proxy would wait up to 60 s.
    let (_ca, upstream, mut bin) =
        tiktok_setup("shutdown_grace_ms = 300", "request_timeout_ms = 60000").await;
    let (_never_opened, held) = gate();
    upstream.set_behaviour(Behaviour::echo().held_until(held));
    let client = bin.client();
    let slow = tokio::spawn(async move {
        client
            .get(format!("http://{HOST}/very/slow"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    upstream.wait_for_requests(1, WAIT).await;
    bin.signal("TERM");
    let exit = bin.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{}", bin.all_output());
    let result = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the client learns at once that the connection closed")
        .unwrap();
    assert!(result.is_err(), "no answer to give: {result:?}");
    assert!(
        bin.all_output().contains("shutdown grace elapsed"),
        "{}",
        bin.all_output()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. SIGHUP.
// ---------------------------------------------------------------------------------------------

const NEW_SECRET: &str = "rotated-app-secret-4b7a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_good_config_applies_it_to_new_requests() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    let client = bin.client();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let resp = client
                .get(format!("http://{HOST}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    get("/before").await;
    assert!(upstream.last_request().signature.ok);

    // The marketplace now expects a new secret; until the reload, signproxy uses the old one.
    bin.rewrite_config(&template("", "", &tiktok_profile_with(NEW_SECRET)));
    upstream.set_verifier(Verifier::tiktok(TIKTOK_APP_KEY, NEW_SECRET));
    get("/not/yet").await;
    assert!(
        !upstream.last_request().signature.ok,
        "the file alone changes nothing"
    );

    bin.signal("HUP");
    let line = bin
        .wait_for_json(1, |v| v["message"] == "config reloaded", "the reload line")
        .await
        .remove(0);
    assert_eq!(line["level"], "INFO", "{line}");
    get("/after").await;
    let r = upstream.last_request();
    assert_eq!(r.path(), "/after");
    assert!(
        r.signature.ok,
        "signed with the new secret: {:?}",
        r.signature.error
    );

    let text = bin.metrics().await;
    assert_eq!(
        metric(&text, "signproxy_config_reloads_total{outcome=\"success\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "signproxy_config_reloads_total{outcome=\"failure\"}"),
        None,
        "{text}"
    );
}

/// README: on SIGHUP "requests already under way finish on the config they started with", and
/// "`listen`, `max_connections`, `max_buffered_bytes`, `[admin] listen` and `[log]` apply at the
/// next restart (the reload says so in the log)". A request whose answer the upstream holds
/// while the reload switches the app secret completes, signed with the old secret; the next
/// request is signed with the new one; the reload names every setting that waits, and the
/// process keeps its ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lets_requests_under_way_finish_on_their_config_and_names_restart_only_changes() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "request_timeout_ms = 60000").await;
    let (open, held) = gate();
    upstream.set_handler(move |r: &Received| {
        (r.path() == "/under/way").then(|| Behaviour::echo().held_until(held.clone()))
    });
    let client = bin.client();
    let body = r#"{"order_status":"UNPAID"}"#;
    let under_way = tokio::spawn({
        let client = client.clone();
        async move {
            let resp = client
                .post(format!("http://{HOST}/under/way?page_size=5"))
                .body(body)
                .send()
                .await
                .expect("the request under way completes");
            (resp.status().as_u16(), response_json(resp).await)
        }
    });
    upstream.wait_for_requests(1, WAIT).await;

    // A new app secret, and a change to every setting that only a restart applies.
    let reloaded = template(
        "max_connections = 77\nmax_buffered_bytes = 536870912",
        "request_timeout_ms = 60000",
        &tiktok_profile_with(NEW_SECRET),
    );
    let mut changed = reloaded.clone();
    for (from, to) in [
        (
            "[proxy]\nlisten = \"127.0.0.1:0\"",
            "[proxy]\nlisten = \"127.0.0.1:9\"",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:10\"",
        ),
        (
            "[log]\nformat = \"json\"",
            "[log]\nformat = \"json\"\nlevel = \"debug\"",
        ),
    ] {
        assert!(changed.contains(from), "{from} in {changed}");
        changed = changed.replace(from, to);
    }
    bin.rewrite_config(&changed);
    bin.signal("HUP");
    bin.wait_for_json(1, |v| v["message"] == "config reloaded", "the reload")
        .await;
    assert!(
        !under_way.is_finished(),
        "the held request is still under way"
    );

    // New requests take the new config at once, on the same port...
    let resp = client
        .get(format!("http://{HOST}/after/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // ...while the one under way, released now, completes on the one it started with.
    open.send(true).unwrap();
    let (status, echo) = tokio::time::timeout(WAIT, under_way)
        .await
        .expect("the held request completes once released")
        .unwrap();
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["path"], "/under/way", "{echo}");

    let received = |path: &str| {
        upstream
            .requests()
            .into_iter()
            .find(|r| r.path() == path)
            .unwrap_or_else(|| panic!("{path} reached the upstream"))
    };
    let before = received("/under/way");
    assert_eq!(before.body, body.as_bytes());
    verify_tiktok(&before, TIKTOK_APP_KEY, TIKTOK_APP_SECRET).expect("signed with the old secret");
    assert!(verify_tiktok(&before, TIKTOK_APP_KEY, NEW_SECRET).is_err());
    let after = received("/after/reload");
    verify_tiktok(&after, TIKTOK_APP_KEY, NEW_SECRET).expect("signed with the new secret");
    assert!(verify_tiktok(&after, TIKTOK_APP_KEY, TIKTOK_APP_SECRET).is_err());

    // One warning per setting that waits for a restart.
    for key in [
        "proxy.listen",
        "proxy.max_connections",
        "proxy.max_buffered_bytes",
        "admin.listen",
        "log",
    ] {
        let note = format!("{key} changed: it takes effect at the next restart");
        let lines = bin
            .wait_for_json(1, |v| v["message"] == note.as_str(), &note)
            .await;
        assert_eq!(lines.len(), 1, "{note}: {lines:?}");
        assert_eq!(lines[0]["level"], "WARN", "{}", lines[0]);
    }
    // ...and they did wait: the admin port is still the one bound at start.
    let (status, _, _) = bin.admin_get("/healthz").await;
    assert_eq!(status, 200);
}

/// The harder half of "requests already under way finish on the config they started with": a
/// request whose body is still arriving when SIGHUP switches the app secret is signed, once its
/// body is in, with the secret of the config it started on. `Expect: 100-continue` makes the
/// start observable: signproxy answers `100 Continue` once it has taken the request and reads
/// its body. Only then is SIGHUP sent, and only after the reload the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_signs_a_request_whose_body_was_still_arriving_with_its_starting_config() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    let body = br#"{"order_status":"UNPAID","page_size":5}"#;
    let mut stream = TcpStream::connect(bin.proxy).await.unwrap();
    stream
        .write_all(
            format!(
                "POST http://{HOST}/body/under/way?page_size=5 HTTP/1.1\r\nHost: {HOST}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Expect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let interim = read_head(&mut stream).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");

    bin.rewrite_config(&template("", "", &tiktok_profile_with(NEW_SECRET)));
    bin.signal("HUP");
    bin.wait_for_json(1, |v| v["message"] == "config reloaded", "the reload")
        .await;
    stream.write_all(body).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started_before = upstream.wait_for_requests(1, WAIT).await.remove(0);
    assert_eq!(started_before.path(), "/body/under/way");
    assert_eq!(started_before.body, body);
    verify_tiktok(&started_before, TIKTOK_APP_KEY, TIKTOK_APP_SECRET)
        .expect("signed with the secret of the config it started on");
    assert!(verify_tiktok(&started_before, TIKTOK_APP_KEY, NEW_SECRET).is_err());

    // A request that starts now gets the new secret.
    let resp = bin
        .client()
        .get(format!("http://{HOST}/started/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started_after = upstream.last_request();
    assert_eq!(started_after.path(), "/started/after");
    verify_tiktok(&started_after, TIKTOK_APP_KEY, NEW_SECRET).expect("signed with the new secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_serving_the_previous_one() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    let client = bin.client();
    let rejected = "config reload rejected; still serving the previous config";
    let broken = [
        template(
            "",
            "",
            &format!(
                "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = {{ env = \"SIGNPROXY_TEST_UNSET_VAR_XYZ\" }}\n"
            ),
        ),
        template("", "", "[tiktok.default\napp_key = \"k\"\n"),
    ];
    for (i, config) in broken.iter().enumerate() {
        bin.rewrite_config(config);
        bin.signal("HUP");
        let lines = bin
            .wait_for_json(i + 1, |v| v["message"] == rejected, "the rejection line")
            .await;
        let line = &lines[i];
        assert_eq!(line["level"], "ERROR", "{line}");
        if i == 0 {
            let error = line["error"].as_str().unwrap_or_default();
            assert!(error.contains("SIGNPROXY_TEST_UNSET_VAR_XYZ"), "{line}");
        }
        assert!(bin.is_running(), "{}", bin.all_output());
        // The previous config (and its secret) still signs.
        let resp = client
            .get(format!("http://{HOST}/still/serving/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let r = upstream.last_request();
        assert_eq!(r.path(), format!("/still/serving/{i}"));
        assert!(r.signature.ok, "{:?}", r.signature.error);
    }
    assert!(bin.json_lines_with_message("config reloaded").is_empty());
    let text = bin.metrics().await;
    assert_eq!(
        metric(&text, "signproxy_config_reloads_total{outcome=\"failure\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "signproxy_config_reloads_total{outcome=\"success\"}"),
        None,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Slowloris.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_trickles_in_is_cut_off_while_others_are_served() {
    let (_ca, upstream, bin) = tiktok_setup("header_read_timeout_ms = 500", "").await;
    let started = Instant::now();
    let stream = TcpStream::connect(bin.proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        if write
            .write_all(format!("GET http://{HOST}/x HTTP/1.1\r\nX-Slow: ").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        // One header byte every 200 ms, never finishing the head (stops once writes fail).
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });

    // Meanwhile, another client is served.
    let resp = bin
        .client()
        .get(format!("http://{HOST}/normal"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last_request().path(), "/normal");

    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "the trickling connection is still open after 10 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "closed by the head timeout, not at once"
    );
    // No request arrived, so there is nothing to answer.
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    trickle.abort();
    assert_eq!(
        upstream.requests().len(),
        1,
        "the partial request never went upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. max_connections.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_client_gets_503_until_a_slot_frees() {
    let (_ca, upstream, bin) =
        tiktok_setup("max_connections = 2\nheader_read_timeout_ms = 60000", "").await;
    let first = TcpStream::connect(bin.proxy).await.unwrap();
    let second = TcpStream::connect(bin.proxy).await.unwrap();
    bin.wait_for_metric("signproxy_open_connections", |v| v == 2.0)
        .await;

    let raw = raw_exchange(
        bin.proxy,
        format!("GET http://{HOST}/third HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    let (status, headers, body) = parse_raw_response(&raw);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&raw));
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(find("x-signproxy-error"), Some("too_many_connections"));
    assert!(find("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let err: Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_eq!(err["error"]["code"], "too_many_connections", "{err}");
    assert!(upstream.requests().is_empty());
    let text = bin.metrics().await;
    assert_eq!(
        metric(&text, "signproxy_connections_refused_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "signproxy_open_connections"), Some(2.0));

    // One of the two goes away: its slot serves the next client.
    drop(first);
    bin.wait_for_metric("signproxy_open_connections", |v| v == 1.0)
        .await;
    assert_still_serves(&bin, &upstream).await;
    drop(second);
}

// ---------------------------------------------------------------------------------------------
// 9. Idle tunnels.
// ---------------------------------------------------------------------------------------------

/// A plain TCP echo server on 127.0.0.1 (stands in for a passthrough host).
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_passthrough_tunnel_is_closed_and_a_busy_one_is_not() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let (echo_addr, _echo) = echo_server().await;
    let config = template(
        "idle_timeout_ms = 3000\npassthrough = [\"plain.test\"]\nallow_networks = [\"127.0.0.0/8\"]",
        "",
        &tiktok_profile_with(TIKTOK_APP_SECRET),
    );
    let extra = [("plain.test:443".to_owned(), echo_addr.to_string())];
    let bin = Binary::start(&config, &ca, &connect_to(&upstream, &extra)).await;

    let (mut tunnel, head) = open_connect(bin.proxy, "plain.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    bin.wait_for_metric("signproxy_open_tunnels", |v| v == 1.0)
        .await;

    // Traffic every 100 ms keeps it open for twice the idle timeout (3 s: a stall of almost 3 s
    // on a loaded machine still leaves it open).
    let busy_until = Instant::now() + Duration::from_millis(6000);
    let mut byte = [0u8; 1];
    let mut sent = 0u8;
    while Instant::now() < busy_until {
        tunnel.write_all(&[sent]).await.expect("busy tunnel open");
        let n = tokio::time::timeout(WAIT, tunnel.read(&mut byte))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!((n, byte[0]), (1, sent), "echoed through the tunnel");
        sent = sent.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Silence: the proxy closes it.
    let (rest, closed) = read_until_closed(&mut tunnel, WAIT).await;
    assert!(closed, "an idle tunnel is still open after {WAIT:?}");
    assert!(rest.is_empty(), "{rest:?}");
    bin.wait_for_metric("signproxy_open_tunnels", |v| v == 0.0)
        .await;
    bin.wait_for_metric("signproxy_open_connections", |v| v == 0.0)
        .await;
}

// ---------------------------------------------------------------------------------------------
// 11. `signproxy check` on the operations settings.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn check_validates_the_operations_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    let config = path.to_string_lossy().into_owned();
    let write = |proxy: &str, tail: &str| {
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{proxy}\n\n{}\n{tail}\n",
                toml_path(&dir.path().join("state")),
                tiktok_profile_with("s")
            ),
        )
        .unwrap();
    };

    // Every key, with good values, is accepted (so a failure below is about the value).
    write(
        "max_connections = 8\nheader_read_timeout_ms = 500\nidle_timeout_ms = 500\nshutdown_grace_ms = 0",
        "[admin]\nlisten = \"127.0.0.1:9\"\n\n[log]\nformat = \"json\"\nlevel = \"debug\"",
    );
    let (code, stdout, stderr) = run_cli(&["check", "--config", &config]).await;
    assert_eq!(code, 0, "stdout {stdout}\nstderr {stderr}");

    for (proxy, tail, key) in [
        ("", "[log]\nformat = \"xml\"", "log.format"),
        ("", "[log]\nlevel = \"chatty\"", "log.level"),
        ("", "[admin]\nlisten = \"nope\"", "admin.listen"),
        (
            "header_read_timeout_ms = 0",
            "",
            "proxy.header_read_timeout_ms",
        ),
        ("idle_timeout_ms = 0", "", "proxy.idle_timeout_ms"),
        ("max_connections = 0", "", "proxy.max_connections"),
    ] {
        write(proxy, tail);
        let (code, stdout, stderr) = run_cli(&["check", "--config", &config]).await;
        assert_eq!(code, 1, "{key}: stdout {stdout}\nstderr {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(stderr.contains(&config), "names the file: {stderr}");
    }
}

/// Both kinds of silent client inside an intercepted (MITM) tunnel: one that sends nothing after
/// CONNECT, one that stalls mid-ClientHello. README: "a connection or tunnel idle for
/// idle_timeout_ms" is closed, and a head must arrive within header_read_timeout_ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_intercepted_tunnel_is_closed_and_frees_its_slot() {
    let (_ca, upstream, bin) = tiktok_setup(
        "max_connections = 2\nidle_timeout_ms = 1000\nheader_read_timeout_ms = 1000",
        "",
    )
    .await;
    let (mut silent, head) = open_connect(bin.proxy, &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut stalled, head) = open_connect(bin.proxy, &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    for (what, tunnel) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let (_, closed) = read_until_closed(tunnel, Duration::from_secs(10)).await;
        assert!(closed, "the {what} tunnel is still open after 10 s");
    }
    bin.wait_for_metric("signproxy_open_connections", |v| v == 0.0)
        .await;
    assert_still_serves(&bin, &upstream).await;
}

/// A plain signed request still goes through (after something tried to hog the proxy).
async fn assert_still_serves(bin: &Binary, upstream: &TestUpstream) {
    let resp = bin
        .client()
        .get(format!("http://{HOST}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last_request().path(), "/after");
}

/// The README's fenced blocks with the given info string.
fn readme_blocks(info: &str) -> Vec<String> {
    common::readme::fenced_blocks(&common::readme::readme(), info)
}

/// The keys of a JSON object, recursively (`checks.tokens` is per-profile, so not descended).
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = format!("{prefix}{key}");
            out.push(path.clone());
            if path != "checks.tokens" {
                key_paths(inner, &format!("{path}."), out);
            }
        }
    }
    out.sort();
}

/// README's Operations examples (the readyz `curl` and its answer, the canonical JSON line) are
/// what signproxy really prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_operations_examples_match_the_binary() {
    let (_ca, _upstream, mut bin) = tiktok_setup("", "").await;
    let sh = readme_blocks("sh");
    let block = sh
        .iter()
        .find(|b| b.contains("/readyz"))
        .expect("README shows a readyz curl");
    let command = block.lines().next().expect("the curl line");
    let shown: Value = serde_json::from_str(
        block
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("# "))
            .expect("README shows the readyz answer as a comment"),
    )
    .expect("the README's readyz answer is JSON");
    let url = command
        .split_whitespace()
        .last()
        .expect("a URL")
        .replace("127.0.0.1:9090", &bin.admin.to_string());
    let answer: Value = if curl_available() {
        let out = std::process::Command::new("curl")
            .args(["-s", &url])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("readyz JSON")
    } else {
        let (status, _, body) = bin.admin_get("/readyz").await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("readyz JSON")
    };
    let (mut want, mut got) = (Vec::new(), Vec::new());
    key_paths(&shown, "", &mut want);
    key_paths(&answer, "", &mut got);
    assert_eq!(got, want, "readyz answer {answer} vs README {shown}");
    assert_eq!(answer["ready"], true);

    let resp = bin
        .client()
        .post(format!("http://{HOST}/product/202309/products/search"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = header(&resp, "x-signproxy-request-id");
    let line = bin.request_line(&id).await;
    let shown: Value = serde_json::from_str(
        readme_blocks("json")
            .iter()
            .find(|b| b.contains("\"message\":\"request\""))
            .expect("README shows a canonical line"),
    )
    .expect("the README's log line is JSON");
    let (mut want, mut got) = (Vec::new(), Vec::new());
    key_paths(&shown, "", &mut want);
    key_paths(&line, "", &mut got);
    assert_eq!(got, want, "log line {line} vs README {shown}");
}

/// A reload keeps a managed profile's token when its token settings did not change (no second
/// refresh, which for TikTok would rotate the refresh token again), and starts afresh when they
/// did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_carries_managed_tokens_over_unless_their_settings_changed() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let grants = tiktok_token_endpoint(&upstream, Arc::new(AtomicBool::new(false)));
    let profile = |refresh_token: &str| {
        format!(
            "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\nrefresh_token = \"{refresh_token}\"\n"
        )
    };
    let mut bin = Binary::start(
        &template("", "", &profile("rt-ops-0")),
        &ca,
        &connect_to(&upstream, &[]),
    )
    .await;
    let send = |bin: &Binary, path: &'static str| {
        let client = bin.client();
        async move {
            let resp = client
                .get(format!("http://{HOST}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    send(&bin, "/before").await;
    assert_eq!(grants.load(Ordering::SeqCst), 1);
    assert_eq!(
        upstream.last_request().header_str("x-tts-access-token"),
        Some("TTP_ops_access_1")
    );

    // Another setting changes; the token settings do not.
    bin.rewrite_config(&template(
        "passthrough = [\"plain.test\"]\nallow_networks = [\"127.0.0.0/8\"]",
        "",
        &profile("rt-ops-0"),
    ));
    bin.signal("HUP");
    bin.wait_for_json(1, |v| v["message"] == "config reloaded", "the first reload")
        .await;
    send(&bin, "/after-reload").await;
    assert_eq!(
        grants.load(Ordering::SeqCst),
        1,
        "no refresh after the reload"
    );
    assert_eq!(
        upstream.last_request().header_str("x-tts-access-token"),
        Some("TTP_ops_access_1")
    );

    // A new authorization (a new refresh token in the config) starts from it.
    bin.rewrite_config(&template(
        "passthrough = [\"plain.test\"]\nallow_networks = [\"127.0.0.0/8\"]",
        "",
        &profile("rt-ops-new-authorization"),
    ));
    bin.signal("HUP");
    bin.wait_for_json(
        2,
        |v| v["message"] == "config reloaded",
        "the second reload",
    )
    .await;
    send(&bin, "/after-new-authorization").await;
    assert_eq!(grants.load(Ordering::SeqCst), 2);
    let refresh = upstream
        .requests()
        .into_iter()
        .rfind(|r| r.host_name().as_deref() == Some("auth.tiktok-shops.com"))
        .expect("a refresh");
    assert!(
        refresh
            .path_and_query
            .contains("refresh_token=rt-ops-new-authorization"),
        "{}",
        refresh.path_and_query
    );
}

// ---------------------------------------------------------------------------------------------
// The admin token, and the admin port as a destination
// ---------------------------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "admin-token-5e1f9c";
const PROXY_PASSWORD: &str = "proxy-password-7a2d";

fn with_admin_token(config: &str) -> String {
    let from = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    assert!(config.contains(from), "{config}");
    config.replace(from, &format!("{from}token = \"{ADMIN_TOKEN}\"\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_readyz_and_metrics_and_the_proxy_never_dials_its_admin_port() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let auth =
        format!("[[proxy.auth.clients]]\nusername = \"app\"\npassword = \"{PROXY_PASSWORD}\"\n");
    let proxy_extra =
        "passthrough = [\"localhost\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]";
    let profiles = format!("{}\n{auth}", tiktok_profile_with(TIKTOK_APP_SECRET));
    let config = with_admin_token(&template(proxy_extra, "", &profiles));
    let mut bin = Binary::start(&config, &ca, &connect_to(&upstream, &[])).await;

    let (status, _, _) = bin.admin_get("/healthz").await;
    assert_eq!(status, 200, "/healthz stays open for health checks");
    for path in ["/readyz", "/metrics"] {
        let (status, content_type, body) = bin.admin_get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(content_type.starts_with("application/json"));
        assert!(body.contains("admin_auth_required"), "{body}");
        let wrong = admin_client()
            .get(format!("http://{}{path}", bin.admin))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert_eq!(
            header(&wrong, "www-authenticate"),
            "Bearer realm=\"signproxy-admin\""
        );
        let right = admin_client()
            .get(format!("http://{}{path}", bin.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    // `signproxy health` reads the token from the config and sends it.
    bin.pin_admin_port_in_config();
    let config_path = bin.config_path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_cli(&["health", "--config", &config_path]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Opening the admin port to passthrough does not make it a destination: it is the proxy's own.
    let admin_port = bin.admin.port();
    let reopened = template(
        &format!("{proxy_extra}\npassthrough_ports = [{admin_port}]"),
        "",
        &profiles,
    );
    bin.rewrite_config(&with_admin_token(&reopened));
    bin.signal("HUP");
    bin.wait_for_json(1, |v| v["message"] == "config reloaded", "the reload")
        .await;
    let credentials = format!("Proxy-Authorization: Basic {}\r\n", {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("app:{PROXY_PASSWORD}"))
    });
    for request in [
        format!("CONNECT localhost:{admin_port} HTTP/1.1\r\nHost: localhost\r\n{credentials}\r\n"),
        format!("GET http://127.0.0.1:{admin_port}/metrics HTTP/1.1\r\nHost: x\r\n{credentials}connection: close\r\n\r\n"),
        format!("GET http://localhost:{admin_port}/readyz HTTP/1.1\r\nHost: x\r\n{credentials}connection: close\r\n\r\n"),
    ] {
        let raw = raw_exchange(bin.proxy, request.as_bytes(), WAIT).await;
        let (status, headers, body) = parse_raw_response(&raw);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 403, "{body}");
        assert!(headers.contains(&("x-signproxy-error".into(), "destination_not_allowed".into())));
        assert!(body.contains("own"), "{body}");
    }
    // Without the proxy password, a 407; neither secret is ever printed.
    let raw = raw_exchange(
        bin.proxy,
        format!("GET http://{HOST}/x HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(parse_raw_response(&raw).0, 407);
    let metrics = admin_client()
        .get(format!("http://{}/metrics", bin.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "signproxy_egress_denied_total{class=\"proxy_itself\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(upstream.requests().is_empty());
    let output = bin.all_output();
    assert!(
        !output.contains(ADMIN_TOKEN) && !output.contains(PROXY_PASSWORD),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_handles_the_accept_loop_backs_off_logs_sparingly_and_recovers() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
    let config = template("", "", &tiktok_profile_with(TIKTOK_APP_SECRET));
    let mut bin =
        Binary::start_with_limit(&config, &ca, &connect_to(&upstream, &[]), &[], Some(64)).await;
    // Far more connections than the process has handles: the kernel still completes them, and
    // accept() fails with EMFILE while they are held.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(stream) = TcpStream::connect(bin.proxy).await {
            held.push(stream);
        }
    }
    let is_warning = |v: &Value| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("accept failed"))
            || v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("accept failed"))
    };
    bin.wait_for_json(1, is_warning, "the accept-failure warning")
        .await;
    // Hold on while the loop retries every 100 ms (some 25 attempts), then count: one line a
    // second at most, judged by the time that really passed, however slow the machine was.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let warnings = bin.json_lines().iter().filter(|v| is_warning(v)).count();
    let allowed = started.elapsed().as_secs() + 1;
    assert!(
        (1..=allowed as usize).contains(&warnings),
        "at most one line a second ({allowed} in {:?}), not one per attempt: {warnings}",
        started.elapsed()
    );
    drop(held);
    // Recovered: the handles come back as the dropped connections drain; until then a request
    // may be cut off or refused, so retry up to the deadline.
    let deadline = Instant::now() + WAIT;
    loop {
        let served = bin
            .client()
            .get(format!("http://{HOST}/after"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if served.as_ref().is_ok_and(|s| *s == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving {WAIT:?} after the handles came back: {served:?}\n{}",
            bin.all_output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upstream.last_request().path(), "/after");
}

// ---------------------------------------------------------------------------------------------
// A rejected signature, and the marketplace's clock
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_signature_is_logged_with_what_was_signed_and_counted() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    upstream.set_behaviour(Behaviour::tiktok_error(401, 106001, "Invalid credentials."));
    let resp = bin
        .client()
        .get(format!("http://{HOST}/api/rejected?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the answer is relayed as it came");
    let request_id = header(&resp, "x-signproxy-request-id");
    let body = resp.text().await.unwrap();
    assert!(body.contains("106001"), "{body}");
    let line = bin
        .wait_for_json(
            1,
            |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("the marketplace rejected the signature"))
            },
            "the rejection warning",
        )
        .await
        .remove(0);
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["code"], "106001", "{line}");
    assert_eq!(line["request_id"], request_id.as_str(), "{line}");
    let explanation = line["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("<app_secret>/api/rejectedapp_key"),
        "{explanation}"
    );
    assert!(
        !bin.all_output().contains(TIKTOK_APP_SECRET),
        "no secret in the output"
    );
    let metrics = bin.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "signproxy_signature_rejections_total{profile=\"tiktok.default\",code=\"106001\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // A success is not a rejection.
    upstream.set_behaviour(Behaviour::echo());
    let ok = bin
        .client()
        .get(format!("http://{HOST}/api/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let metrics = bin.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "signproxy_signature_rejections_total{profile=\"tiktok.default\",code=\"106001\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketplace_clock_far_from_ours_is_a_gauge_and_one_warning() {
    let (_ca, upstream, mut bin) = tiktok_setup("", "").await;
    // An hour behind us, in the HTTP date format the marketplace sends.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let date = httpdate::fmt_http_date(hour_ago);
    upstream.set_behaviour(Behaviour::echo().with_header("date", &date));
    for path in ["/api/one", "/api/two"] {
        let resp = bin
            .client()
            .get(format!("http://{HOST}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let metrics = bin.metrics().await;
    let skew = metric(&metrics, "signproxy_upstream_clock_skew_seconds").unwrap_or_default();
    assert!((-3610.0..=-3590.0).contains(&skew), "{skew} {metrics}");
    let warnings = bin
        .wait_for_json(
            1,
            |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("clock differs from the marketplace"))
            },
            "the clock warning",
        )
        .await;
    assert_eq!(warnings.len(), 1, "warned once, not per answer");
}

/// `[proxy] workers`: that many event loops share the port (SO_REUSEPORT), each with its own
/// upstream pools; connections spread over them are all signed, the connection limit is one
/// for the process, and SIGTERM stops every one of them.
#[tokio::test]
async fn several_workers_share_the_port_and_the_connection_limit() {
    let (_ca, upstream, mut bin) = tiktok_setup("workers = 3\nmax_connections = 40", "").await;
    let lines = bin
        .wait_for_json(
            1,
            |v| v["fields"]["workers"] == 3 || v["workers"] == 3,
            "workers = 3",
        )
        .await;
    assert!(
        lines[0].to_string().contains("signproxy listening"),
        "{:?}",
        lines[0]
    );
    let mut answers = Vec::new();
    for i in 0..24 {
        // A fresh client per request: a new connection each, spread by the kernel.
        let client = bin.client();
        answers.push(tokio::spawn(async move {
            client
                .get(format!("http://{HOST}/workers/{i}?n={i}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap().unwrap(), 200);
    }
    let received = upstream.requests();
    assert_eq!(received.len(), 24);
    assert!(
        received.iter().all(|r| r.signature.ok),
        "every worker signs"
    );
    // The clients above are gone; once their connections have closed, 40 idle connections,
    // spread over the workers, take every slot: the next is refused whichever worker accepts
    // it. (Without the wait, a slot freed late by an old connection races the new ones.)
    bin.wait_for_metric("signproxy_open_connections", |v| v == 0.0)
        .await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(bin.proxy).await.unwrap());
    }
    bin.wait_for_metric("signproxy_open_connections", |v| v >= 40.0)
        .await;
    let refused = bin
        .client()
        .get(format!("http://{HOST}/workers/refused"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(upstream.requests().len(), 24);
    drop(held);
    bin.signal("TERM");
    let exit = bin.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{}", bin.all_output());
}

/// eBay signing keys last three years: a key within 30 days of its `key_expires_at` is named at
/// start-up and in `/readyz` (without making the proxy unready: it still signs); a later one is
/// only listed.
#[tokio::test]
async fn a_signing_key_near_its_expiry_is_warned_about_at_start_up_and_in_readyz() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::ebay(EbayTestKey::rfc9421_ed25519().public));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = common::keys::RFC9421_ED25519_PRIVATE_PEM;
    let profiles = format!(
        "[ebay.soon]\nprivate_key = \"\"\"\n{key}\"\"\"\njwe = \"j1\"\naccess_token = \"t\"\nkey_expires_at = {}\n\n\
         [ebay.later]\nprivate_key = \"\"\"\n{key}\"\"\"\njwe = \"j2\"\naccess_token = \"t\"\nkey_expires_at = {}\nhosts = [\"api.sandbox.ebay.com\"]\n",
        now + 10 * 86_400 - 60,
        now + 100 * 86_400,
    );
    let mut bin = Binary::start(
        &template("", "", &profiles),
        &ca,
        &connect_to(&upstream, &[]),
    )
    .await;
    let line = bin
        .wait_for_text(|l| l.contains("signing key expires"), "the expiry warning")
        .await;
    assert!(
        line.contains("ebay.soon") && line.contains("in 10 days"),
        "{line}"
    );
    assert!(
        line.contains("signproxy ebay create-key --profile soon --force"),
        "{line}"
    );
    assert!(
        !bin.all_output().contains("ebay.later]: the signing key"),
        "only the near one is warned about"
    );

    let (status, _, body) = bin.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    let keys = &ready["checks"]["signing_credentials"];
    assert_eq!(
        keys["ebay.soon"]["expires_at"],
        now + 10 * 86_400 - 60,
        "{ready}"
    );
    assert!(
        keys["ebay.soon"]["warning"]
            .as_str()
            .unwrap()
            .contains("in 10 days"),
        "{ready}"
    );
    assert_eq!(
        keys["ebay.later"]["expires_at"],
        now + 100 * 86_400,
        "{ready}"
    );
    assert!(keys["ebay.later"].get("warning").is_none(), "{ready}");

    // `check` says the same.
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bin.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: [ebay.soon]: the signing key expires in 10 days"),
        "{stderr}"
    );
}

/// An eBay profile without its signing key yet (before `create-key`) asks eBay for nothing, not
/// even at start-up or for `/readyz`, and does not make the proxy unready.
#[tokio::test]
async fn a_keyless_ebay_profile_asks_for_no_token_and_leaves_readiness_alone() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::ebay(EbayTestKey::rfc9421_ed25519().public));
    let profiles =
        "[ebay.default]\nclient_id = \"App-PRD-keyless\"\nclient_secret = \"keyless-secret\"\n";
    let bin = Binary::start(
        &template("", "", profiles),
        &ca,
        &connect_to(&upstream, &[]),
    )
    .await;
    let (status, _, body) = bin.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(
        ready["checks"]["tokens"].get("ebay.default").is_none(),
        "{ready}"
    );
    assert_eq!(
        upstream.connections_accepted(),
        0,
        "nothing was asked of eBay"
    );
}
