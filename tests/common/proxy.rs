//! `ProxyHarness`: the real signproxy server (`signproxy::proxy::run`) on 127.0.0.1 port 0,
//! configured from TOML, with its state (and interception CA) in a temp folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ca::TestCa;
use super::upstream::TestUpstream;

/// A running proxy. Dropping it stops the server.
pub struct ProxyHarness {
    pub addr: SocketAddr,
    /// The running proxy's metrics (what `/metrics` would show).
    pub metrics: Arc<signproxy::metrics::Metrics>,
    proxy: signproxy::proxy::Proxy,
    render: Render,
    pub dir: tempfile::TempDir,
    /// The test upstream CA, as given to signproxy in `[upstream] ca_file`.
    pub upstream_ca_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A config with the test plumbing filled in: state in the temp folder, the test CA trusted
/// upstream, every upstream name dialled at `upstream`. `proxy` and `upstream_extra` are extra
/// lines for those tables; `rest` holds the profiles.
pub fn test_config(proxy: &str, upstream_extra: &str, rest: &str) -> String {
    format!(
        "[proxy]\nstate_dir = \"@STATE@\"\n{proxy}\n\n[upstream]\nca_file = \"@CA_FILE@\"\nconnect_to = @CONNECT_TO@\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 10000\n{upstream_extra}\n\n{rest}\n"
    )
}

pub const TIKTOK_APP_KEY: &str = "test_app_key";
pub const TIKTOK_APP_SECRET: &str = "test-app-secret-9f8e7d";

/// The usual TikTok profile for tests.
pub fn tiktok_profile() -> String {
    format!(
        "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\n"
    )
}

impl ProxyHarness {
    /// Starts the proxy. `template` may use `@STATE@` (temp state folder), `@CA_FILE@` (the test
    /// CA's PEM), `@CONNECT_TO@` (every upstream name → `upstream`, or `{}`) and `@PROXY_PORT@`
    /// (the port the proxy itself listens on).
    pub async fn start(
        template: &str,
        ca: &TestCa,
        upstream: Option<&TestUpstream>,
    ) -> ProxyHarness {
        Self::start_with_clock(template, ca, upstream, signproxy::clock::system()).await
    }

    /// Like `start`, with the proxy reading time (signing, token expiry, refresh backoff) from
    /// `clock`: a `ManualClock` lets a test cross an expiry or a backoff without sleeping.
    pub async fn start_with_clock(
        template: &str,
        ca: &TestCa,
        upstream: Option<&TestUpstream>,
        clock: signproxy::clock::SharedClock,
    ) -> ProxyHarness {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream_ca_path = ca.write_ca_pem(dir.path());
        let state = dir.path().join("state");
        let connect_to = upstream
            .map(|u| u.connect_to_toml())
            .unwrap_or_else(|| "{}".into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let render = Render {
            proxy_port: addr.port(),
            state: toml_path(&state),
            ca_file: toml_path(&upstream_ca_path),
            connect_to,
        };
        let text = render.apply(template);
        let config_path = dir.path().join("signproxy.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = signproxy::config::Config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        // Created here rather than inside run(), so tests can read it without racing the server.
        signproxy::ca::CertificateAuthority::load_or_create(&config.mitm).expect("proxy CA");
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::new(signproxy::metrics::Metrics::new());
        let proxy = signproxy::proxy::Proxy::with_clock(
            Arc::new(config),
            Arc::clone(&metrics),
            vec![addr],
            clock,
        )
        .expect("proxy state");
        let serving = proxy.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serving.serve(listener, shutdown).await.expect("proxy run");
        });
        ProxyHarness {
            addr,
            metrics,
            proxy,
            render,
            dir,
            upstream_ca_path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Switches the running proxy to a new config (what SIGHUP does), rendered like `start`'s.
    pub fn reload(&self, template: &str) {
        let text = self.render.apply(template);
        let config = signproxy::config::Config::from_toml_str(&text, self.dir.path())
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        self.proxy.reload(Arc::new(config)).expect("reload");
    }

    /// The value of one sample in the metrics exposition (`name{labels}` exactly as printed),
    /// or 0 when it has not been recorded.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Path of signproxy's own interception CA certificate.
    pub fn proxy_ca_path(&self) -> PathBuf {
        self.dir.path().join("state").join("ca-cert.pem")
    }

    /// signproxy's own interception CA certificate (PEM), for clients using HTTPS_PROXY.
    pub fn proxy_ca_pem(&self) -> String {
        std::fs::read_to_string(self.proxy_ca_path()).expect("proxy CA cert")
    }

    /// Stops accepting and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for ProxyHarness {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The placeholders a config template may use, as `start` filled them.
struct Render {
    proxy_port: u16,
    state: String,
    ca_file: String,
    connect_to: String,
}

impl Render {
    fn apply(&self, template: &str) -> String {
        template
            .replace("@PROXY_PORT@", &self.proxy_port.to_string())
            .replace("@STATE@", &self.state)
            .replace("@CA_FILE@", &self.ca_file)
            .replace("@CONNECT_TO@", &self.connect_to)
    }
}

fn toml_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\")
}

/// Sends raw bytes to `addr` and reads until the peer closes or `timeout` passes. For requests
/// no well-behaved client would send (hand-made chunking, mismatched Host, ...).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    out
}

/// Splits a raw HTTP/1.1 response into (status, lower-case headers, body). The body is taken
/// as-is after the blank line (tests use `connection: close` or content-length bodies).
pub fn parse_raw_response(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}
