//! Real clients pointed at the proxy (or straight at a test upstream): reqwest and curl.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A reqwest client that sends everything through the proxy at `proxy_addr` (`http://` URLs in
/// absolute form, `https://` through CONNECT), trusts only the CA in `ca_pem`, and ignores the
/// proxy environment variables.
pub fn reqwest_via_proxy(proxy_addr: SocketAddr, ca_pem: &str) -> reqwest::Client {
    reqwest_builder(ca_pem)
        .proxy(reqwest::Proxy::all(format!("http://{proxy_addr}")).expect("proxy URL"))
        .build()
        .expect("reqwest client")
}

/// A reqwest client that talks straight to a test upstream: every `(name, addr)` in `resolve`
/// is pinned to `addr` (its port is used), it trusts only `ca_pem`, and uses no proxy.
pub fn reqwest_direct(ca_pem: &str, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let mut b = reqwest_builder(ca_pem).no_proxy();
    for (name, addr) in resolve {
        b = b.resolve(name, *addr);
    }
    b.build().expect("reqwest client")
}

/// The common base: only the test CA, 30 s timeout, no automatic decompression or redirects.
pub fn reqwest_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM for reqwest"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

/// Whether a working `curl` binary is on PATH.
pub fn curl_available() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// For the top of a curl test: `if !require_curl("my_test") { return; }`. When curl is absent
/// it prints `SKIPPED: my_test: curl not found` to the process's stderr. Written to the stream
/// itself rather than with `eprintln!`, which the test harness captures and shows only for
/// failing tests: a skipped test passes, so its note would otherwise never be seen.
pub fn require_curl(test_name: &str) -> bool {
    let ok = curl_available();
    if !ok {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: {test_name}: curl not found (install curl to run it; .ci/run does as root)"
        );
    }
    ok
}

/// What curl got back: the final response (after any CONNECT / 1xx), plus curl's stderr.
#[derive(Clone, Debug)]
pub struct CurlOutput {
    /// curl's exit code (0 on success; 56, 35, ... on transport errors).
    pub exit_code: i32,
    /// The final response's status (0 when there was none).
    pub status: u16,
    /// The final response's headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "curl body is not JSON ({e}): status {}, body {:?}, stderr {}",
                self.status,
                self.body_str(),
                self.stderr
            )
        })
    }
}

/// Runs `curl -q -sS --proxy http://PROXY --cacert CA [extra args...]` (proxy environment
/// variables removed, 30 s max) and returns the final response.
pub async fn curl_via_proxy(
    proxy_addr: SocketAddr,
    ca_pem_path: &Path,
    args: &[&str],
) -> CurlOutput {
    let proxy = format!("http://{proxy_addr}");
    let ca = ca_pem_path.to_string_lossy().into_owned();
    let mut all: Vec<&str> = vec!["--proxy", &proxy, "--cacert", &ca];
    all.extend_from_slice(args);
    curl(&all).await
}

/// Runs `curl -q -sS [args...]` with the proxy environment variables removed and returns the
/// final response. Headers and body go to temp files, so binary bodies survive.
pub async fn curl(args: &[&str]) -> CurlOutput {
    let dir = tempfile::tempdir().expect("tempdir for curl");
    let head_path = dir.path().join("headers");
    let body_path = dir.path().join("body");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-q")
        .arg("-sS")
        .arg("--max-time")
        .arg("30")
        .arg("-D")
        .arg(&head_path)
        .arg("-o")
        .arg(&body_path)
        .args(args);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "CURL_HOME",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().await.expect("run curl");
    let head = std::fs::read(&head_path).unwrap_or_default();
    let body = std::fs::read(&body_path).unwrap_or_default();
    let (status, headers) = parse_last_head(&String::from_utf8_lossy(&head));
    CurlOutput {
        exit_code: out.status.code().unwrap_or(-1),
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// From a `-D` dump (possibly several heads: CONNECT's 200, 100 Continue, the final one),
/// the status and headers of the last head.
pub fn parse_last_head(dump: &str) -> (u16, Vec<(String, String)>) {
    let mut status = 0;
    let mut headers = Vec::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (status, headers)
}

/// The response body parsed as JSON (reqwest's `json` feature is not enabled); panics with the
/// status and body text when it is not JSON.
pub async fn response_json(resp: reqwest::Response) -> serde_json::Value {
    let status = resp.status();
    let bytes = resp.bytes().await.expect("read response body");
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "response body is not JSON ({e}): status {status}, body {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Sends `req` and returns the status and the JSON body.
pub async fn send_json(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = req.send().await.expect("send request");
    let status = resp.status().as_u16();
    (status, response_json(resp).await)
}
