//! Secrets never leak: every path runs with distinctive secret values while all log output (at
//! debug level, signproxy and its dependencies) is captured; then the logs, error bodies,
//! `Debug` output and CLI output are searched for those values.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{parse_raw_response, raw_exchange, test_config, ProxyHarness};
use common::*;

const APP_SECRET: &str = "LEAKCHECK-app-secret-7c1d";
const TIKTOK_TOKEN: &str = "TTP_LEAKCHECK_tiktok_token";
const EBAY_TOKEN: &str = "v^1.1#LEAKCHECK_ebay_token";
const JWE: &str = "eyJLEAKCHECK.jwe-value.abc";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn profiles() -> String {
    format!(
        "[tiktok.default]\napp_key = \"leak_app\"\napp_secret = \"{APP_SECRET}\"\naccess_token = \"{TIKTOK_TOKEN}\"\n\n\
         [ebay.default]\nprivate_key = \"\"\"\n{}\"\"\"\njwe = \"{JWE}\"\naccess_token = \"{EBAY_TOKEN}\"\n",
        common::keys::RFC9421_ED25519_PRIVATE_PEM
    )
}

/// The base64 body of the private key: what a leak of key material would contain.
fn key_material() -> String {
    common::keys::RFC9421_ED25519_PRIVATE_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

fn assert_clean(what: &str, text: &str, extra: &[String]) {
    let mut needles: Vec<String> = vec![
        APP_SECRET.into(),
        TIKTOK_TOKEN.into(),
        EBAY_TOKEN.into(),
        JWE.into(),
        key_material(),
    ];
    needles.extend_from_slice(extra);
    for needle in &needles {
        assert!(
            !text.contains(needle.as_str()),
            "{what} leaks {needle:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_debug_or_cli_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let ca = TestCa::new();
    let verifier = Verifier::ByHost(vec![
        (
            "open-api.tiktokglobalshop.com".into(),
            Verifier::tiktok("leak_app", APP_SECRET),
        ),
        (
            "api.ebay.com".into(),
            Verifier::ebay(EbayTestKey::rfc9421_ed25519().public.clone()),
        ),
    ]);
    let upstream = TestUpstream::start(&ca, verifier);
    let config = test_config("max_body_bytes = 100", "", &profiles());
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    let plain = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let mitm = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());

    let mut error_bodies = String::new();
    // Signed requests, absolute-form and through CONNECT, both marketplaces.
    for client in [&plain, &mitm] {
        for scheme in ["http", "https"] {
            if scheme == "https" && std::ptr::eq(client, &plain) {
                continue;
            }
            let r = client
                .post(format!("{scheme}://open-api.tiktokglobalshop.com/order/202309/orders/search?page_token=abc"))
                .body("{\"a\":1}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let r = client
                .post(format!(
                    "{scheme}://api.ebay.com/sell/finances/v1/transaction?limit=1"
                ))
                .body("{\"b\":2}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // Every error path: duplicate key, too large, unknown profile, not allowed, token endpoint.
    for (url, body) in [
        (
            "http://open-api.tiktokglobalshop.com/x?a=1&a=2",
            String::new(),
        ),
        ("http://open-api.tiktokglobalshop.com/x", "y".repeat(500)),
        ("http://example.com/x", String::new()),
        (
            "http://api.ebay.com/identity/v1/oauth2/token",
            "grant_type=client_credentials".into(),
        ),
    ] {
        let r = plain.post(url).body(body).send().await.unwrap();
        error_bodies.push_str(&r.text().await.unwrap());
    }
    let r = plain
        .get("http://api.ebay.com/x")
        .header("x-signproxy-profile", "nope")
        .send()
        .await
        .unwrap();
    error_bodies.push_str(&r.text().await.unwrap());
    let raw = raw_exchange(
        proxy.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    error_bodies.push_str(&String::from_utf8_lossy(&parse_raw_response(&raw).2));
    // A client that does not trust the CA: a failing handshake is logged.
    let _ = plain
        .get("https://open-api.tiktokglobalshop.com/x")
        .send()
        .await;

    // The signatures actually sent are secrets of a kind too: never logged.
    let mut sent_signatures = Vec::new();
    for r in upstream.requests() {
        if let Some(sign) = r.query_param("sign") {
            sent_signatures.push(sign);
        }
        if let Some(sig) = r.header_str("signature") {
            sent_signatures.push(
                sig.trim_start_matches("sig1=:")
                    .trim_end_matches(':')
                    .to_owned(),
            );
        }
    }
    assert!(
        sent_signatures.len() >= 4,
        "signed requests reached the upstream"
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.signature.ok || r.path().contains("oauth2")));

    proxy.stop().await;
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("request"), "logs were captured: {logs}");
    assert!(logs.contains("open-api.tiktokglobalshop.com"));
    assert!(
        !logs.contains("page_token=abc"),
        "query strings are not logged:\n{logs}"
    );
    assert_clean("the logs", &logs, &sent_signatures);
    assert_clean("error bodies", &error_bodies, &sent_signatures);

    // Debug output of the whole typed config.
    let dir = tempfile::tempdir().unwrap();
    let config_text = format!(
        "[proxy]\nstate_dir = \"{}\"\n{}",
        dir.path().display(),
        profiles()
    );
    let config = signproxy::config::Config::from_toml_str(&config_text, dir.path()).unwrap();
    assert_clean("Config's Debug", &format!("{config:?}"), &[]);

    // CLI: `sign --explain` for both marketplaces, and `check` on a broken config.
    let path = dir.path().join("signproxy.toml");
    std::fs::write(&path, &config_text).unwrap();
    for url in [
        "https://open-api.tiktokglobalshop.com/order/202309/orders?x=1",
        "https://api.ebay.com/sell/finances/v1/transaction",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args(["sign", "--config"])
            .arg(&path)
            .args(["--explain", "-d", "{}", "POST", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("<access_token>"), "{stdout}");
        let explanation = stdout.split("\n\n").nth(1).unwrap_or_default();
        assert_clean("sign --explain", explanation, &[]);
        assert!(
            !stdout.contains(APP_SECRET)
                && !stdout.contains(TIKTOK_TOKEN)
                && !stdout.contains(EBAY_TOKEN)
        );
    }
    let broken = config_text.replace("app_key = \"leak_app\"", "app_key = \"\"");
    std::fs::write(&path, broken).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("tiktok.default.app_key"), "{all}");
    assert_clean("check errors", &all, &[]);
}
