//! Load benchmark: requests per second through signproxy (TikTok HMAC signing, eBay Ed25519
//! signing, HTTPS interception) against the same client talking straight to the same TLS upstream,
//! all measured in one run on loopback, reported as ratios to that direct baseline.
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
    let results = vec![
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
    proxy.stop().await;
}
