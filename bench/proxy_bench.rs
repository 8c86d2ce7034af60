//! Load benchmark: requests per second through signproxy (TikTok HMAC signing, eBay Ed25519
//! signing, HTTPS interception) against the same client talking straight to the same TLS upstream,
//! all measured in one run on loopback, reported as ratios to that direct baseline.
//!
//! When `nginx` is on PATH, nginx configured as a TLS-originating proxy to the same upstream
//! (pooled, verifying, no signing) is measured in the same run as the peer to beat.
//!
//! signproxy runs as the release binary in its own process, as nginx does, so neither shares the
//! load generator's runtime.
//!
//! Run: `cargo bench --bench proxy_bench` (env: BENCH_SECS, BENCH_CONCURRENCY).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::tiktok_profile;
use common::*;

struct Result {
    name: &'static str,
    requests: u64,
    errors: u64,
    seconds: f64,
}

impl Result {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `concurrency` loops of requests for `secs`, each loop waiting for its response.
async fn measure(
    name: &'static str,
    client: reqwest::Client,
    url: String,
    body: Option<&'static str>,
    concurrency: usize,
    secs: u64,
) -> Result {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Warm the pools first so handshakes are not what is measured.
    for _ in 0..concurrency {
        let _ = send(&client, &url, body).await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, done, errors) =
            (client.clone(), url.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if send(&client, &url, body).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Result {
        name,
        requests: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

async fn send(client: &reqwest::Client, url: &str, body: Option<&'static str>) -> bool {
    let request = match body {
        Some(b) => client
            .post(url)
            .header("content-type", "application/json")
            .body(b),
        None => client.get(url),
    };
    match request.send().await {
        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// A proxy in a process of its own, as deployed; stopped with SIGTERM when dropped (so nginx's
/// master takes its workers down too).
struct ProxyProcess {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Runs `command` and waits for it to listen on `port`.
    fn spawn(
        mut command: std::process::Command,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Option<Self> {
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let process = ProxyProcess { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(process);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let stopped = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The release signproxy binary with `profiles`, its upstream mapped to the test upstream, and
/// per-request logging off (as nginx's access_log is).
fn start_signproxy(ca: &TestCa, upstream: &TestUpstream, profiles: &str) -> ProxyProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let ca_file = ca.write_ca_pem(dir.path());
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{state}\"\n\n\
         [upstream]\nca_file = \"{ca_file}\"\nconnect_to = {connect_to}\n\n\
         [log]\nlevel = \"warn\"\n\n{profiles}",
        state = dir.path().join("state").display(),
        ca_file = ca_file.display(),
        connect_to = upstream.connect_to_toml(),
    );
    let config_path = dir.path().join("signproxy.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"));
    command.arg("run").arg("--config").arg(&config_path);
    command.env_remove("SIGNPROXY_LOG");
    ProxyProcess::spawn(command, port, dir).expect("signproxy starts")
}

/// nginx as a TLS-originating proxy to the upstream: plain HTTP in (absolute-form works as
/// with any forward proxy client), pooled keep-alive TLS out, certificate verified by name.
fn start_nginx(ca_pem: &str, upstream: std::net::SocketAddr, host: &str) -> Option<ProxyProcess> {
    let binary = ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("-v").output().is_ok())?;
    let dir = tempfile::tempdir().ok()?;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).ok()?;
    let port = free_port();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let d = dir.path().display();
    let conf = format!(
        "{user}worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 100000;\n\
         upstream marketplace {{ server {upstream}; keepalive 128; keepalive_requests 100000; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
         proxy_pass https://marketplace;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n      proxy_set_header Host {host};\n\
         proxy_ssl_server_name on;\n      proxy_ssl_name {host};\n\
         proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {ca};\n\
         proxy_ssl_session_reuse on;\n    }}\n  }}\n}}\n",
        user = if root { "user root;\n" } else { "" },
        ca = ca_path.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let mut command = std::process::Command::new(binary);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"]);
    ProxyProcess::spawn(command, port, dir)
}

#[tokio::main]
async fn main() {
    let secs: u64 = env_or("BENCH_SECS", 5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let ca = TestCa::new();
    // The upstream checks nothing, so its cost is the same for every variant.
    let upstream = TestUpstream::start(&ca, Verifier::None);
    let ebay = format!(
        "[ebay.default]\nprivate_key = \"\"\"\n{}\"\"\"\njwe = \"bench-jwe\"\n",
        common::keys::RFC9421_ED25519_PRIVATE_PEM
    );
    let proxy = start_signproxy(&ca, &upstream, &format!("{}\n{ebay}", tiktok_profile()));
    let proxy_ca_pem = std::fs::read_to_string(proxy.dir.path().join("state/ca-cert.pem"))
        .expect("signproxy's CA");

    let host = "open-api.tiktokglobalshop.com";
    let body = Some("{\"order_status\":\"UNPAID\",\"page_size\":20}");
    let direct = reqwest_direct(&ca.ca_pem(), &[(host, upstream.addr())]);
    let via_proxy = reqwest_via_proxy(proxy.addr(), &ca.ca_pem());
    let via_mitm = reqwest_via_proxy(proxy.addr(), &proxy_ca_pem);
    let path = "/order/202309/orders/search?page_size=20";

    println!("signproxy load benchmark: {concurrency} concurrent clients, {secs} s per variant, loopback, POST 42-byte JSON");
    let nginx = start_nginx(&ca.ca_pem(), upstream.addr(), host);
    let mut results = vec![
        measure(
            "direct (no proxy, baseline)",
            direct,
            format!("https://{host}:{}{path}", upstream.port()),
            body,
            concurrency,
            secs,
        )
        .await,
        measure(
            "signproxy, TikTok signing (HTTP_PROXY)",
            via_proxy.clone(),
            format!("http://{host}{path}"),
            body,
            concurrency,
            secs,
        )
        .await,
        measure(
            "signproxy, eBay Ed25519 (HTTP_PROXY)",
            via_proxy,
            "http://api.ebay.com/sell/finances/v1/transaction?limit=20".into(),
            body,
            concurrency,
            secs,
        )
        .await,
        measure(
            "signproxy, TikTok via CONNECT (HTTPS_PROXY)",
            via_mitm,
            format!("https://{host}{path}"),
            body,
            concurrency,
            secs,
        )
        .await,
    ];
    match &nginx {
        Some(nginx) => {
            results.push(
                measure(
                    "nginx, TLS-originating proxy (no signing)",
                    reqwest_via_proxy(nginx.addr(), &ca.ca_pem()),
                    format!("http://{host}{path}"),
                    body,
                    concurrency,
                    secs,
                )
                .await,
            );
        }
        None => println!("(nginx not found: the nginx peer is skipped)"),
    }
    let baseline = results[0].rate();
    println!(
        "{:<46} {:>10} {:>8} {:>12}",
        "variant", "req/s", "errors", "vs direct"
    );
    for r in &results {
        println!(
            "{:<46} {:>10.0} {:>8} {:>11.2}x",
            r.name,
            r.rate(),
            r.errors,
            r.rate() / baseline
        );
    }
    // Head to head: rounds that alternate which goes first, so neither always gets the
    // machine's warmer or quieter moment; the median ratio is reported.
    if let Some(nginx) = &nginx {
        let rounds: usize = env_or("BENCH_ROUNDS", 3);
        let signproxy_client = reqwest_via_proxy(proxy.addr(), &ca.ca_pem());
        let nginx_client = reqwest_via_proxy(nginx.addr(), &ca.ca_pem());
        let url = format!("http://{host}{path}");
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let mut pair = Vec::new();
            for turn in 0..2 {
                let (name, client) = if (round + turn) % 2 == 0 {
                    ("signproxy", signproxy_client.clone())
                } else {
                    ("nginx", nginx_client.clone())
                };
                pair.push(measure(name, client, url.clone(), body, concurrency, secs).await);
            }
            let rate = |name: &str| pair.iter().find(|r| r.name == name).map(Result::rate);
            if let (Some(ours), Some(theirs)) = (rate("signproxy"), rate("nginx")) {
                println!(
                    "  round {}: signproxy {ours:.0} req/s, nginx {theirs:.0} req/s",
                    round + 1
                );
                ratios.push(ours / theirs);
            }
        }
        ratios.sort_by(f64::total_cmp);
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        if let Some(median) = ratios.get(ratios.len() / 2) {
            println!(
                "signproxy TikTok signing vs nginx proxying unsigned, {rounds} alternating rounds: median {median:.2}x ({})",
                shown.join(", ")
            );
        }
    }
    drop(nginx);
    drop(proxy);
}
