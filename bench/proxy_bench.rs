//! Load benchmark: requests per second through signproxy (TikTok HMAC signing, eBay Ed25519
//! signing, HTTPS interception) against the same client talking straight to the same TLS upstream,
//! all measured in one run on loopback, reported as ratios to that direct baseline.
//!
//! When `nginx` is on PATH, nginx configured as a TLS-originating proxy to the same upstream
//! (pooled, verifying, no signing) is measured in the same run as the peer to beat.
//!
//! Run: `cargo run --release --example proxy_bench` (env: BENCH_SECS, BENCH_CONCURRENCY).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{test_config, tiktok_profile, ProxyHarness};
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

/// nginx as a TLS-originating proxy to the upstream: plain HTTP in (absolute-form works as
/// with any forward proxy client), pooled keep-alive TLS out, certificate verified by name.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(ca_pem: &str, upstream: std::net::SocketAddr, host: &str) -> Option<Nginx> {
        let binary = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-v").output().is_ok())?;
        let dir = tempfile::tempdir().ok()?;
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_pem).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
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
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // Wait for the port.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Nginx {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then takes its workers down with it.
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
    let config = test_config("", "", &format!("{}\n{ebay}", tiktok_profile()));
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;

    let host = "open-api.tiktokglobalshop.com";
    let body = Some("{\"order_status\":\"UNPAID\",\"page_size\":20}");
    let direct = reqwest_direct(&ca.ca_pem(), &[(host, upstream.addr())]);
    let via_proxy = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let via_mitm = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let path = "/order/202309/orders/search?page_size=20";

    println!("signproxy load benchmark: {concurrency} concurrent clients, {secs} s per variant, loopback, POST 42-byte JSON");
    let nginx = Nginx::start(&ca.ca_pem(), upstream.addr(), host);
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
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
            results.push(
                measure(
                    "nginx, TLS-originating proxy (no signing)",
                    reqwest_via_proxy(addr, &ca.ca_pem()),
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
    if let Some(peer) = results.iter().find(|r| r.name.starts_with("nginx")) {
        println!(
            "signproxy TikTok signing (HTTP_PROXY) vs nginx proxying unsigned: {:.2}x",
            results[1].rate() / peer.rate()
        );
    }
    drop(nginx);
    proxy.stop().await;
}
