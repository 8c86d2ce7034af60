//! End to end, inbound webhooks: a real HTTP client (reqwest) posts to a real `[inbound.NAME]`
//! listener, which forwards to a real test app on 127.0.0.1 that records what arrives. eBay keys
//! come from a test Notification API over TLS, reached through the proxy's own upstream client.
//! Every expected signature and digest here is computed in the test (hmac, sha2, p256), never by
//! signproxy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use common::{EbayTestKey, TestCa};
use signproxy::config::Config;
use signproxy::inbound::keys::{ProxyKeyFetch, KEY_TTL};
use signproxy::inbound::{Inbound, KeyCache};
use signproxy::metrics::Metrics;
use signproxy::proxy::Proxy;

// TikTok's official vector (webhooks.md).
const TT_KEY: &str = "abcdef";
const TT_SECRET: &str = "123";
const TT_BODY: &str = r#"{"type":1,"tts_notification_id":"7380066284010030890","shop_id":"7495540735365777507","timestamp":1718305585,"data":{"is_on_hold_order":true,"order_id":"576653688135258178","order_status":"UNPAID","update_time":1718305585}}"#;
const TT_SIG: &str = "5dec0f11ec2f6783b8deee53c9ffbf8d024302f7c7e7fa55a35d17629031ac05";

const SHOPEE_KEY: &str = "shpk-inbound-test-key";
const SHOPEE_URL: &str = "https://hooks.example.com/webhooks/shopee";

// eBay's official vector (webhooks.md).
const EBAY_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZhhxXKtR+TOvtDbgTPCkSof02qgBB7IsYOyf76ilExJ/upAa/vKIKheOoCyOpcLmi4t0b4uepb7LLjmMr90FUg==";
const EBAY_KID: &str = "9936261a-7d7b-4621-a0f1-96ccb428af49";
const EBAY_HEADER: &str = "eyJhbGciOiJlY2RzYSIsImtpZCI6Ijk5MzYyNjFhLTdkN2ItNDYyMS1hMGYxLTk2Y2NiNDI4YWY0OSIsInNpZ25hdHVyZSI6Ik1FWUNJUUNmeGZJV3V4bVdjSUJRSjljNS9YN2lHREpxczJSQ0dzQkVhQWppbnlycmZBSWhBSVY2d0djVGlCdVY1S0pVaWYyaG9reXJMK1E5c3NIa2FkK214Mm5FRTI1dyIsImRpZ2VzdCI6IlNIQTEifQ==";
const EBAY_BODY: &str = r#"{"metadata":{"topic":"MARKETPLACE_ACCOUNT_DELETION","schemaVersion":"1.0","deprecated":false},"notification":{"notificationId":"49feeaeb-4982-42d9-a377-9645b8479411_33f7e043-fed8-442b-9d44-791923bd9a6d","eventDate":"2021-03-19T20:43:59.462Z","publishDate":"2021-03-19T20:43:59.679Z","publishAttemptCount":1,"data":{"username":"test_user","userId":"ma8vp1jySJC","eiasToken":"nY+sHZ2PrBmdj6wVnY+sEZ2PrA2dj6wJnY+gAZGEpwmdj6x9nY+seQ=="}}}"#;
const EBAY_APP_TOKEN: &str = "v^1.1#i^1#app-token-for-keys";
const EBAY_VERIFICATION_TOKEN: &str = "verification_token-0123456789-abcdefghij";
const EBAY_ENDPOINT: &str = "https://hooks.example.com/webhooks/ebay";
/// A second key id the Notification API serves, for a key generated in the test.
const OTHER_KID: &str = "0a1b2c3d-0000-4000-8000-00000000beef";

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

// ------------------------------------------------------------------------------------------------
// The test app

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct App {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// (status, delay) for the next answers; default 200 at once.
    behaviour: Arc<Mutex<(u16, Duration)>>,
}

impl App {
    async fn start() -> (App, SocketAddr) {
        App::start_with(None).await
    }

    /// The app over TLS when `tls` is given.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (App, SocketAddr) {
        let app = App {
            behaviour: Arc::new(Mutex::new((200, Duration::ZERO))),
            ..App::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let app = served.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                app.serve(stream).await;
                            }
                        }
                        None => app.serve(stream).await,
                    }
                });
            }
        });
        (app, addr)
    }

    async fn serve<S>(self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req: Request<Incoming>| {
            let app = self.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                app.seen.lock().unwrap().push(Seen {
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                let (status, delay) = *app.behaviour.lock().unwrap();
                tokio::time::sleep(delay).await;
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                resp.headers_mut()
                    .insert("x-app", http::HeaderValue::from_static("yes"));
                Ok::<_, Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn answer(&self, status: u16, delay: Duration) {
        *self.behaviour.lock().unwrap() = (status, delay);
    }
}

// ------------------------------------------------------------------------------------------------
// The test Notification API (TLS)

#[derive(Clone, Default)]
struct KeyApi {
    /// Paths asked for, with whether the bearer token was the profile's.
    asked: Arc<Mutex<Vec<(String, bool)>>>,
    other_key_spki_b64: Arc<Mutex<String>>,
}

impl KeyApi {
    async fn start(ca: &TestCa) -> (KeyApi, SocketAddr) {
        let api = KeyApi::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["api.ebay.com"]));
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let api = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let api = api.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                == Some(&format!("Bearer {EBAY_APP_TOKEN}"));
                            api.asked.lock().unwrap().push((path.clone(), authorized));
                            let key = if path
                                == format!("/commerce/notification/v1/public_key/{EBAY_KID}")
                            {
                                Some(EBAY_KEY.to_owned())
                            } else if path
                                == format!("/commerce/notification/v1/public_key/{OTHER_KID}")
                            {
                                Some(api.other_key_spki_b64.lock().unwrap().clone())
                            } else {
                                None
                            };
                            let (status, body) = match (authorized, key) {
                                (false, _) => (401, "{}".to_owned()),
                                (true, None) => (404, "{}".to_owned()),
                                (true, Some(k)) => (
                                    200,
                                    format!(
                                        r#"{{"key":"-----BEGIN PUBLIC KEY-----{k}-----END PUBLIC KEY-----","algorithm":"ECDSA","digest":"SHA1"}}"#
                                    ),
                                ),
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (api, addr)
    }

    fn asked(&self) -> Vec<(String, bool)> {
        self.asked.lock().unwrap().clone()
    }
}

// ------------------------------------------------------------------------------------------------
// The listener under test

struct Setup {
    app: App,
    keys: KeyApi,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    config_debug: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Setup {
    async fn start(tiktok_deadline_ms: u64) -> Setup {
        Setup::start_with(tiktok_deadline_ms, false).await
    }

    /// `https_app`: the app listens over TLS (a leaf from the test CA, trusted via ca_file).
    async fn start_with(tiktok_deadline_ms: u64, https_app: bool) -> Setup {
        let ca = TestCa::new();
        let (app, app_addr) = if https_app {
            let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["localhost"]));
            App::start_with(Some(acceptor)).await
        } else {
            App::start().await
        };
        let forward_to = if https_app {
            format!("https://localhost:{}/app/", app_addr.port())
        } else {
            format!("http://{app_addr}/app/")
        };
        let (keys, keys_addr) = KeyApi::start(&ca).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.write_ca_pem(dir.path());
        let ebay_key = EbayTestKey::rfc9421_ed25519();
        let text = format!(
            r#"
[proxy]
state_dir = "{state}"

[upstream]
ca_file = "{ca_file}"
connect_to = {{ "api.ebay.com:443" = "{keys_addr}" }}

[tiktok.default]
app_key = "{TT_KEY}"
app_secret = "{TT_SECRET}"

[shopee.default]
partner_id = 2001887
partner_key = "{SHOPEE_KEY}"

[ebay.default]
private_key = '''
{pem}'''
jwe = "test-jwe"
access_token = "{EBAY_APP_TOKEN}"

[inbound.hooks]
listen = "127.0.0.1:0"
forward_to = "{forward_to}"

[[inbound.hooks.routes]]
path = "/webhooks/tiktok"
profile = "tiktok.default"
deadline_ms = {tiktok_deadline_ms}

[[inbound.hooks.routes]]
path = "/webhooks/shopee"
profile = "shopee.default"
callback_url = "{SHOPEE_URL}"

[[inbound.hooks.routes]]
path = "/webhooks/ebay"
profile = "ebay.default"
verification_token = "{EBAY_VERIFICATION_TOKEN}"
endpoint = "{EBAY_ENDPOINT}"
"#,
            state = dir.path().join("state").display(),
            ca_file = ca_file.display(),
            pem = ebay_key.private_pem(),
        );
        let config = Arc::new(Config::from_toml_str(&text, dir.path()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::new(Arc::clone(&config), Arc::clone(&metrics), Vec::new()).unwrap();
        let key_cache = Arc::new(KeyCache::new(Arc::new(ProxyKeyFetch { proxy }), KEY_TTL));
        let config_debug = format!("{config:?}");
        let settings = Arc::new(config.inbound[0].clone());
        let inbound = Inbound::new(
            settings,
            Arc::clone(&metrics),
            &config.upstream.extra_roots,
            Some(key_cache),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(signproxy::inbound::serve(
            listener,
            Arc::new(inbound),
            async move {
                let _ = stopped.await;
            },
        ));
        Setup {
            app,
            keys,
            addr,
            metrics,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            config_debug,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Bytes) {
        let mut req = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap())
    }

    fn metric(&self, profile: &str, outcome: &str) -> f64 {
        let text = self.metrics.encode();
        let needle = format!(
            "signproxy_inbound_webhooks_total{{listener=\"hooks\",profile=\"{profile}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

// ------------------------------------------------------------------------------------------------
// TikTok

#[tokio::test]
async fn tiktok_event_arrives_byte_for_byte_and_a_replay_is_acknowledged_without_reaching_the_app()
{
    let s = Setup::start(2500).await;
    let (status, body) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    let seen = s.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), TT_BODY.as_bytes());
    assert_eq!(seen[0].path, "/app/webhooks/tiktok");
    assert_eq!(seen[0].headers["x-signproxy-verified"], "tiktok.default");
    assert_eq!(
        seen[0].headers["x-signproxy-event-id"],
        "7380066284010030890"
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert!(seen[0].headers.get("authorization").is_none());

    // The same event again (TikTok's retry, or an attacker's replay).
    let (status, body) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(s.app.seen().len(), 1, "a replay reached the app");
    assert_eq!(s.metric("tiktok.default", "forwarded"), 1.0);
    assert_eq!(s.metric("tiktok.default", "duplicate"), 1.0);
}

#[tokio::test]
async fn tiktok_forged_stale_and_unsigned_events_get_401_empty_and_never_reach_the_app() {
    let s = Setup::start(2500).await;
    // Signed with another app's secret.
    let forged = hmac_hex("not-the-secret", &[TT_KEY.as_bytes(), TT_BODY.as_bytes()]);
    // A genuine signature from an earlier event, on a new body.
    let stale_body = TT_BODY.replace("UNPAID", "AWAITING_SHIPMENT");
    // The body alone signed (the usual mistake), and a Bearer prefix.
    let body_only = hmac_hex(TT_SECRET, &[TT_BODY.as_bytes()]);
    let bearer = format!("Bearer {TT_SIG}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        (
            "forged",
            vec![("authorization", &forged)],
            TT_BODY.as_bytes(),
            401,
        ),
        (
            "stale",
            vec![("authorization", TT_SIG)],
            stale_body.as_bytes(),
            401,
        ),
        ("unsigned", vec![], TT_BODY.as_bytes(), 401),
        (
            "body only",
            vec![("authorization", &body_only)],
            TT_BODY.as_bytes(),
            401,
        ),
        (
            "bearer",
            vec![("authorization", &bearer)],
            TT_BODY.as_bytes(),
            400,
        ),
    ];
    for (name, headers, body, expected) in cases {
        let (status, answer) = s.post("/webhooks/tiktok", &headers, body).await;
        assert_eq!(status, expected, "{name}");
        assert!(answer.is_empty(), "{name}: non-empty answer");
    }
    assert!(s.app.seen().is_empty(), "a refused event reached the app");
    assert_eq!(s.metric("tiktok.default", "forged"), 3.0);
    assert_eq!(s.metric("tiktok.default", "unsigned"), 1.0);
    assert_eq!(s.metric("tiktok.default", "malformed"), 1.0);
    // The genuine event still goes through afterwards.
    let (status, _) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.app.seen().len(), 1);
}

#[tokio::test]
async fn a_slow_app_gets_504_and_the_retry_is_delivered_not_deduplicated() {
    let s = Setup::start(300).await;
    s.app.answer(200, Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let (status, _) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the deadline was not kept"
    );
    assert_eq!(s.metric("tiktok.default", "timeout"), 1.0);
    // The app refuses the next copy: relayed, and not recorded either.
    s.app.answer(503, Duration::ZERO);
    let (status, _) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 503);
    // The marketplace retries once more: this time the app takes it.
    s.app.answer(200, Duration::ZERO);
    let (status, _) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.app.seen().len(), 3);
    assert_eq!(s.metric("tiktok.default", "duplicate"), 0.0);
}

#[tokio::test]
async fn unknown_paths_and_other_methods_are_refused_without_forwarding() {
    let s = Setup::start(2500).await;
    let (status, _) = s
        .post(
            "/elsewhere",
            &[("authorization", TT_SIG)],
            TT_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 404);
    let resp = s
        .client
        .get(format!("http://{}/webhooks/tiktok", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(s.app.seen().is_empty());
}

// ------------------------------------------------------------------------------------------------
// Shopee

#[tokio::test]
async fn shopee_push_verified_on_the_registered_url_and_mistakes_refused() {
    let s = Setup::start(2500).await;
    let body = br#"{"shop_id":600001,"code":3,"timestamp":1718305585,"data":{"ordersn":"2406130001","status":"READY_TO_SHIP"}}"#;
    let good = hmac_hex(SHOPEE_KEY, &[SHOPEE_URL.as_bytes(), b"|", body]);
    let no_pipe = hmac_hex(SHOPEE_KEY, &[SHOPEE_URL.as_bytes(), body]);
    let local_url = format!("http://{}/webhooks/shopee", s.addr);
    let behind = hmac_hex(SHOPEE_KEY, &[local_url.as_bytes(), b"|", body]);
    for sig in [&no_pipe, &behind] {
        let (status, answer) = s
            .post("/webhooks/shopee", &[("authorization", sig)], body)
            .await;
        assert_eq!(status, 401);
        assert!(answer.is_empty());
    }
    assert!(s.app.seen().is_empty());
    let (status, answer) = s
        .post("/webhooks/shopee", &[("authorization", &good)], body)
        .await;
    assert_eq!(status, 200);
    assert!(answer.is_empty(), "Shopee wants an empty body");
    let seen = s.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), body);
    assert_eq!(seen[0].headers["x-signproxy-verified"], "shopee.default");
    let expected_id = format!("sha256:{}", hex::encode(&Sha256::digest(body)[..16]));
    assert_eq!(
        seen[0].headers["x-signproxy-event-id"],
        expected_id.as_str()
    );
    // Shopee's retry of the same push.
    let (status, _) = s
        .post("/webhooks/shopee", &[("authorization", &good)], body)
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.app.seen().len(), 1);
}

// ------------------------------------------------------------------------------------------------
// eBay

/// A P-256 key made in the test, its SPKI (base64) and the X-EBAY-SIGNATURE for `body`.
fn other_key_signature(body: &[u8]) -> (String, String) {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let mut seed = [0u8; 32];
    seed[31] = 7;
    seed[0] = 0x42;
    let signing = p256::ecdsa::SigningKey::from_slice(&seed).unwrap();
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, built by hand around the point.
    let point = signing.verifying_key().to_encoded_point(false);
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(point.as_bytes());
    let digest = sha1::Sha1::digest(body);
    let signature: p256::ecdsa::Signature = signing.sign_prehash(&digest).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = serde_json::json!({
        "alg": "ecdsa",
        "kid": OTHER_KID,
        "signature": b64.encode(signature.to_der().as_bytes()),
        "digest": "SHA1",
    });
    (b64.encode(spki), b64.encode(header.to_string()))
}

#[tokio::test]
async fn ebay_vector_verifies_with_a_key_fetched_over_tls_cached_and_refetched_for_a_new_kid() {
    let s = Setup::start(2500).await;
    s.app.answer(204, Duration::ZERO);
    // Tampered first: refused with 412, yet the key was fetched for it.
    let tampered = EBAY_BODY.replace("\"test_user\"", "\"test_user2\"");
    let (status, _) = s
        .post(
            "/webhooks/ebay",
            &[("x-ebay-signature", EBAY_HEADER)],
            tampered.as_bytes(),
        )
        .await;
    assert_eq!(status, 412);
    assert!(s.app.seen().is_empty());
    // The genuine one: the cached key verifies it, no second fetch.
    let (status, _) = s
        .post(
            "/webhooks/ebay",
            &[("x-ebay-signature", EBAY_HEADER)],
            EBAY_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 204);
    let seen = s.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), EBAY_BODY.as_bytes());
    assert_eq!(seen[0].headers["x-signproxy-verified"], "ebay.default");
    assert_eq!(
        seen[0].headers["x-signproxy-event-id"],
        "49feeaeb-4982-42d9-a377-9645b8479411_33f7e043-fed8-442b-9d44-791923bd9a6d"
    );
    assert!(seen[0].headers.get("x-ebay-signature").is_none());
    let key_path = format!("/commerce/notification/v1/public_key/{EBAY_KID}");
    assert_eq!(s.keys.asked(), vec![(key_path.clone(), true)]);
    // eBay's retry: acknowledged with 204, not forwarded.
    let (status, _) = s
        .post(
            "/webhooks/ebay",
            &[("x-ebay-signature", EBAY_HEADER)],
            EBAY_BODY.as_bytes(),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(s.app.seen().len(), 1);

    // A key id not seen before is fetched at once.
    let body = EBAY_BODY.replace("49feeaeb", "59feeaeb");
    let (spki, header) = other_key_signature(body.as_bytes());
    *s.keys.other_key_spki_b64.lock().unwrap() = spki;
    let (status, _) = s
        .post(
            "/webhooks/ebay",
            &[("x-ebay-signature", &header)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(s.app.seen().len(), 2);
    assert_eq!(
        s.keys.asked(),
        vec![
            (key_path, true),
            (
                format!("/commerce/notification/v1/public_key/{OTHER_KID}"),
                true
            )
        ]
    );
    // Unsigned: 412 and no fetch.
    let (status, _) = s.post("/webhooks/ebay", &[], EBAY_BODY.as_bytes()).await;
    assert_eq!(status, 412);
    assert_eq!(s.keys.asked().len(), 2);
    assert_eq!(s.app.seen().len(), 2);
}

/// Key ids come from an unverified header: a flood of made-up ones may cost at most ten key
/// service calls a minute, and never evicts the key genuine events verify with.
#[tokio::test]
async fn made_up_ebay_key_ids_cost_at_most_ten_fetches_a_minute() {
    let s = Setup::start(2500).await;
    s.app.answer(204, Duration::ZERO);
    let genuine = || {
        s.post(
            "/webhooks/ebay",
            &[("x-ebay-signature", EBAY_HEADER)],
            EBAY_BODY.as_bytes(),
        )
    };
    assert_eq!(genuine().await.0, 204);
    assert_eq!(s.keys.asked().len(), 1);
    let b64 = base64::engine::general_purpose::STANDARD;
    for i in 0..15 {
        let header = serde_json::json!({
            "alg": "ecdsa",
            "kid": format!("0a1b2c3d-0000-4000-8000-0000000001{i:02}"),
            "signature": "MEUCIQ==",
            "digest": "SHA1",
        });
        let (status, _) = s
            .post(
                "/webhooks/ebay",
                &[("x-ebay-signature", &b64.encode(header.to_string()))],
                EBAY_BODY.as_bytes(),
            )
            .await;
        assert_ne!(status, 204, "a made-up key id never verifies");
    }
    assert_eq!(
        s.keys.asked().len(),
        10,
        "the genuine fetch and nine made-up ones, then no more this minute"
    );
    // The genuine key is still held: its retry is acknowledged as a duplicate, no fetch.
    assert_eq!(genuine().await.0, 204);
    assert_eq!(s.keys.asked().len(), 10);
    assert_eq!(s.app.seen().len(), 1);
}

#[tokio::test]
async fn ebay_challenge_is_answered_by_signproxy_and_never_forwarded() {
    let s = Setup::start(2500).await;
    let code = "a8628072-3d33-45ee-9004-bee86830a22d";
    let resp = s
        .client
        .get(format!(
            "http://{}/webhooks/ebay?challenge_code={code}",
            s.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let expected = hex::encode(Sha256::digest(
        format!("{code}{EBAY_VERIFICATION_TOKEN}{EBAY_ENDPOINT}").as_bytes(),
    ));
    assert_eq!(json["challengeResponse"], expected.as_str());
    assert!(s.app.seen().is_empty());
    assert!(s.keys.asked().is_empty());
}

// ------------------------------------------------------------------------------------------------
// `signproxy run` + `signproxy webhook send`

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the `run` child when the test ends, pass or fail.
struct Child(std::process::Child);

/// `signproxy run --config CONFIG`, once its inbound listener on `port` takes connections.
async fn run_until_listening(config: &std::path::Path, port: u16) -> Child {
    let run = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn webhook_send_drives_a_running_listener_valid_replayed_and_forged() {
    // A secret no output could contain by chance (the vector's `123` can show up in any id).
    const SEND_SECRET: &str = "webhook-send-secret-7c1e";
    let (app, app_addr) = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let inbound_port = free_port();
    let config_path = dir.path().join("signproxy.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
state_dir = "{state}"

[tiktok.default]
app_key = "{TT_KEY}"
app_secret = "{SEND_SECRET}"

[inbound.hooks]
listen = "127.0.0.1:{inbound_port}"
forward_to = "http://{app_addr}/"

[[inbound.hooks.routes]]
path = "/webhooks/tiktok"
profile = "tiktok.default"
"#,
            proxy_port = free_port(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_signproxy");
    let check = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(check.status.success());
    let expected = format!(
        "inbound hooks 127.0.0.1:{inbound_port}/webhooks/tiktok -> http://{app_addr}/webhooks/tiktok (profile tiktok.default, answer within 2500 ms)"
    );
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .lines()
            .any(|l| l == expected),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let _run = run_until_listening(&config_path, inbound_port).await;
    let send_path = config_path.clone();
    let send = move |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["webhook", "send", "--config"])
            .arg(&send_path)
            .args([
                "--profile",
                "tiktok.default",
                "--type",
                "ORDER_STATUS_CHANGE",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out =
        tokio::task::spawn_blocking(move || (send(&[]), send(&["--replay"]), send(&["--forged"])))
            .await
            .unwrap();
    let (valid, replay, forged) = out;
    assert!(valid.contains("-> 200"), "{valid}");
    let lines: Vec<&str> = replay.lines().collect();
    assert_eq!(lines.len(), 2, "{replay}");
    assert!(
        lines[0].contains("-> 200")
            && lines[1].contains("replayed event")
            && lines[1].contains("-> 200"),
        "{replay}"
    );
    assert!(forged.contains("-> 401"), "{forged}");
    assert!(!forged.contains(SEND_SECRET));
    // Two distinct events reached the app; the replay and the forgery did not.
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    for event in &seen {
        let json: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(json["type"], 1);
        assert_eq!(event.headers["x-signproxy-verified"], "tiktok.default");
        assert_eq!(
            event.headers["x-signproxy-event-id"],
            json["tts_notification_id"].as_str().unwrap()
        );
    }
    assert_ne!(seen[0].body, seen[1].body);
}

#[test]
fn readme_inbound_block_is_valid_config() {
    let block = common::readme::fenced_blocks(&common::readme::readme(), "toml inbound")
        .pop()
        .expect("README has a ```toml inbound block");
    std::env::set_var(
        "EBAY_VERIFICATION_TOKEN",
        "readme-verification-token-0123456789abcdef",
    );
    let dir = tempfile::tempdir().unwrap();
    let key = EbayTestKey::rfc9421_ed25519();
    let text = format!(
        "[proxy]\nstate_dir = \"{}\"\n[tiktok.default]\napp_key = \"k\"\napp_secret = \"s\"\n[shopee.default]\npartner_id = 1\npartner_key = \"shpk\"\n[ebay.default]\nprivate_key = '''\n{}'''\njwe = \"j\"\n{block}",
        dir.path().display(),
        key.private_pem()
    );
    let config = Config::from_toml_str(&text, dir.path()).unwrap();
    let routes: Vec<String> = config.inbound[0]
        .routes
        .iter()
        .map(|r| format!("{} {}", r.path, r.profile.qualified_name()))
        .collect();
    assert_eq!(
        routes,
        [
            "/webhooks/tiktok tiktok.default",
            "/webhooks/ebay ebay.default",
            "/webhooks/shopee shopee.default"
        ]
    );
}

#[tokio::test]
async fn no_inbound_secret_shows_in_debug_metrics_or_answers() {
    let s = Setup::start(2500).await;
    let forged = hmac_hex("x", &[TT_BODY.as_bytes()]);
    let (_, a) = s
        .post(
            "/webhooks/tiktok",
            &[("authorization", &forged)],
            TT_BODY.as_bytes(),
        )
        .await;
    let (_, b) = s
        .post(
            "/webhooks/ebay",
            &[("x-ebay-signature", EBAY_HEADER)],
            EBAY_BODY.as_bytes(),
        )
        .await;
    let shown = format!(
        "{}\n{}\n{}\n{}",
        s.config_debug,
        s.metrics.encode(),
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&b)
    );
    assert!(
        shown.contains("inbound"),
        "the Debug output is not the config's"
    );
    for secret in [SHOPEE_KEY, EBAY_VERIFICATION_TOKEN, EBAY_APP_TOKEN] {
        assert!(!shown.contains(secret), "a secret shows: {secret}");
    }
}

#[tokio::test]
async fn an_https_app_gets_the_verified_event_and_its_answer_is_relayed() {
    let s = Setup::start_with(2500, true).await;
    s.app.answer(202, Duration::ZERO);
    let resp = s
        .client
        .post(format!("http://{}/webhooks/tiktok", s.addr))
        .header("authorization", TT_SIG)
        .body(TT_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["x-app"], "yes");
    let seen = s.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), TT_BODY.as_bytes());
    assert_eq!(seen[0].headers["x-signproxy-verified"], "tiktok.default");
}

/// SIGHUP re-reads the inbound routes like the rest of the config: a rotated app secret
/// verifies from then on (the old one is refused), and a new `forward_to` receives the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_rotated_secret_and_a_new_forward_to() {
    const OLD_SECRET: &str = "sighup-old-secret-4d2a";
    const NEW_SECRET: &str = "sighup-new-secret-9b7f";
    let (old_app, old_addr) = App::start().await;
    let (new_app, new_addr) = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let inbound_port = free_port();
    let proxy_port = free_port();
    let config = |secret: &str, app: SocketAddr| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\nstate_dir = \"{state}\"\n\n\
             [tiktok.default]\napp_key = \"{TT_KEY}\"\napp_secret = \"{secret}\"\n\n\
             [inbound.hooks]\nlisten = \"127.0.0.1:{inbound_port}\"\nforward_to = \"http://{app}/\"\n\n\
             [[inbound.hooks.routes]]\npath = \"/webhooks/tiktok\"\nprofile = \"tiktok.default\"\n",
            state = dir.path().join("state").display(),
        )
    };
    let live = dir.path().join("signproxy.toml");
    let old = dir.path().join("old.toml");
    std::fs::write(&live, config(OLD_SECRET, old_addr)).unwrap();
    std::fs::write(&old, config(OLD_SECRET, old_addr)).unwrap();
    let run = run_until_listening(&live, inbound_port).await;
    // `webhook send` signs with the secret of the config it reads.
    fn send(config: &std::path::Path) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args(["webhook", "send", "--profile", "tiktok.default", "--config"])
            .arg(config)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }
    let (live_c, old_c) = (live.clone(), old.clone());
    let first = tokio::task::spawn_blocking(move || send(&old_c))
        .await
        .unwrap();
    assert!(first.contains("-> 200"), "{first}");
    assert_eq!(old_app.seen().len(), 1);

    std::fs::write(&live, config(NEW_SECRET, new_addr)).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Until the reload lands, the new secret is refused (and nothing is recorded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = live_c.clone();
        let out = tokio::task::spawn_blocking(move || send(&c)).await.unwrap();
        if out.contains("-> 200") {
            break;
        }
        assert!(out.contains("-> 401"), "{out}");
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(new_app.seen().len(), 1, "the new forward_to got the event");
    assert_eq!(
        new_app.seen()[0].headers["x-signproxy-verified"],
        "tiktok.default"
    );
    let stale = tokio::task::spawn_blocking(move || send(&old))
        .await
        .unwrap();
    assert!(stale.contains("-> 401"), "the rotated-out secret: {stale}");
    assert_eq!(old_app.seen().len(), 1, "nothing more reached the old app");
}
