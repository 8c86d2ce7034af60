//! End to end, token lifecycle: the proxy obtains, refreshes, persists and retries access tokens
//! against a local TLS stand-in for TikTok's and eBay's token endpoints (reached via connect_to).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{test_config, ProxyHarness, TIKTOK_APP_KEY, TIKTOK_APP_SECRET};
use common::*;

const HOST: &str = "open-api.tiktokglobalshop.com";
const EBAY_RT: &str = "v^1.1#i^1#r^1#f^0#p^3#I^3#t^Ul4x+MF8/Rl4=";

#[derive(Default)]
struct Endpoint {
    /// Token endpoint answers 503 while set.
    down: bool,
    /// Lifetime of granted access tokens, in seconds.
    lifetime: u64,
    /// Delay before answering a grant (to let concurrent requests pile up).
    delay: Option<Duration>,
    /// API requests carrying one of these tokens get the marketplace's "token expired" answer.
    rejected_tokens: Vec<String>,
    /// ... sent chunked, with no content-length.
    reject_chunked: bool,
    /// ... gzip-encoded (`content-encoding: gzip`).
    reject_gzip: bool,
    /// What the token endpoint saw: refresh tokens (TikTok) or form bodies (eBay).
    seen: Vec<String>,
    authorizations: Vec<String>,
}

/// A TLS upstream that is both the API (echo, TikTok signatures verified) and the token endpoints.
struct World {
    ca: TestCa,
    upstream: TestUpstream,
    grants: Arc<AtomicUsize>,
    endpoint: Arc<Mutex<Endpoint>>,
}

impl World {
    fn new() -> World {
        let ca = TestCa::new();
        let verifier = Verifier::ByHost(vec![(
            HOST.into(),
            Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET),
        )]);
        let upstream = TestUpstream::start(&ca, verifier);
        let grants = Arc::new(AtomicUsize::new(0));
        let endpoint = Arc::new(Mutex::new(Endpoint {
            lifetime: 7 * 86400,
            ..Endpoint::default()
        }));
        let (g, e) = (grants.clone(), endpoint.clone());
        upstream.set_handler(move |r: &Received| {
            let host = r.host_name().unwrap_or_default();
            let mut ep = e.lock().unwrap();
            if host == "auth.tiktok-shops.com" && r.path() == "/api/v2/token/refresh" {
                ep.seen
                    .push(r.query_param("refresh_token").unwrap_or_default());
                assert_eq!(
                    r.query_param("app_secret").as_deref(),
                    Some(TIKTOK_APP_SECRET)
                );
                assert_eq!(
                    r.query_param("grant_type").as_deref(),
                    Some("refresh_token")
                );
                if ep.down {
                    return Some(Behaviour::respond(
                        503,
                        "text/html",
                        b"<html>maintenance</html>",
                    ));
                }
                let n = g.fetch_add(1, Ordering::SeqCst) + 1;
                let b = Behaviour::tiktok_grant(
                    &format!("TTP_access_{n}"),
                    &format!("rt-{n}"),
                    ep.lifetime,
                );
                return Some(match ep.delay {
                    Some(d) => b.with_delay(d),
                    None => b,
                });
            }
            if host == "api.ebay.com" && r.path() == "/identity/v1/oauth2/token" {
                ep.seen.push(String::from_utf8_lossy(&r.body).into_owned());
                ep.authorizations
                    .push(r.header_str("authorization").unwrap_or_default().to_owned());
                if ep.down {
                    return Some(Behaviour::json(
                        400,
                        r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#,
                    ));
                }
                let n = g.fetch_add(1, Ordering::SeqCst) + 1;
                let body = serde_json::json!({
                    "access_token": format!("v^1.1#ebay_{n}"), "expires_in": ep.lifetime,
                    "token_type": "User Access Token"
                });
                return Some(Behaviour::json(200, &body.to_string()));
            }
            let presented = r
                .header_str("x-tts-access-token")
                .map(str::to_owned)
                .or_else(|| {
                    r.header_str("authorization")
                        .map(|a| a.trim_start_matches("Bearer ").to_owned())
                });
            if let Some(token) = presented.filter(|t| ep.rejected_tokens.contains(t)) {
                let answer = if token.starts_with("TTP_") {
                    Behaviour::tiktok_error(200, 105002, "access token expired")
                } else {
                    Behaviour::ebay_error(401, 1001, "Invalid access token")
                };
                let answer = if ep.reject_gzip {
                    let plain = answer.body.clone().unwrap_or_default();
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    std::io::Write::write_all(&mut gz, &plain).unwrap();
                    Behaviour {
                        body: Some(gz.finish().unwrap()),
                        ..answer
                    }
                    .with_header("content-encoding", "gzip")
                } else {
                    answer
                };
                return Some(if ep.reject_chunked {
                    answer.with_chunked()
                } else {
                    answer
                });
            }
            None
        });
        World {
            ca,
            upstream,
            grants,
            endpoint,
        }
    }

    fn tiktok_config(refresh_token: &str) -> String {
        test_config(
            "",
            "",
            &format!(
                "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\nrefresh_token = \"{refresh_token}\"\n"
            ),
        )
    }

    async fn proxy(&self, config: &str) -> ProxyHarness {
        ProxyHarness::start(config, &self.ca, Some(&self.upstream)).await
    }

    fn api_requests(&self) -> Vec<Received> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|r| {
                r.host_name().as_deref() == Some(HOST)
                    || (r.host_name().as_deref() == Some("api.ebay.com")
                        && !r.path().contains("oauth2"))
            })
            .collect()
    }

    fn grants(&self) -> usize {
        self.grants.load(Ordering::SeqCst)
    }
}

async fn get(proxy: &ProxyHarness, ca: &TestCa, path: &str) -> (u16, String) {
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}{path}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn first_use_fetches_a_token_then_reuses_it() {
    let world = World::new();
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    let (status, _) = get(&proxy, &world.ca, "/order/202309/orders").await;
    assert_eq!(status, 200);
    let (status, _) = get(&proxy, &world.ca, "/order/202309/orders").await;
    assert_eq!(status, 200);
    assert_eq!(world.grants(), 1, "one grant for two requests");
    assert_eq!(world.endpoint.lock().unwrap().seen, vec!["rt-0".to_owned()]);
    for r in world.api_requests() {
        assert!(r.signature.ok, "{:?}", r.signature.error);
        assert_eq!(r.header_str("x-tts-access-token"), Some("TTP_access_1"));
        assert!(
            r.query_param("access_token").is_none(),
            "never in the query for 202309+"
        );
    }
    // A client that brings its own token is left alone, and needs no grant.
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    client
        .get(format!("http://{HOST}/x"))
        .header("x-tts-access-token", "TTP_client_own")
        .send()
        .await
        .unwrap();
    assert_eq!(
        world
            .upstream
            .last_request()
            .header_str("x-tts-access-token"),
        Some("TTP_client_own")
    );
    assert_eq!(world.grants(), 1);
}

#[tokio::test]
async fn concurrent_requests_share_exactly_one_refresh() {
    let world = World::new();
    world.endpoint.lock().unwrap().delay = Some(Duration::from_millis(300));
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.get(format!("http://{HOST}/order/202309/orders?i={i}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(world.grants(), 1);
    let api = world.api_requests();
    assert_eq!(api.len(), 16);
    assert!(api
        .iter()
        .all(|r| r.header_str("x-tts-access-token") == Some("TTP_access_1") && r.signature.ok));
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_ahead_of_time() {
    let world = World::new();
    // 4 s tokens: refreshed once half their life has passed.
    world.endpoint.lock().unwrap().lifetime = 4;
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    assert_eq!(get(&proxy, &world.ca, "/a").await.0, 200);
    assert_eq!(world.grants(), 1);
    // Time itself is the behaviour under test here.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(get(&proxy, &world.ca, "/b").await.0, 200);
    assert_eq!(world.grants(), 2);
    assert_eq!(
        world
            .upstream
            .last_request()
            .header_str("x-tts-access-token"),
        Some("TTP_access_2")
    );
    assert_eq!(
        world.endpoint.lock().unwrap().seen,
        vec!["rt-0".to_owned(), "rt-1".to_owned()],
        "the rotated refresh token is used"
    );
}

#[tokio::test]
async fn token_expired_answer_refreshes_once_and_retries_signed_afresh() {
    let world = World::new();
    world.endpoint.lock().unwrap().rejected_tokens = vec!["TTP_access_1".into()];
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let body = "{\"order_status\":\"UNPAID\"}";
    let resp = client
        .post(format!("http://{HOST}/order/202309/orders/search"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(
        echo["signature"]["ok"], true,
        "the client sees the retried, successful answer: {echo}"
    );
    let api = world.api_requests();
    assert_eq!(api.len(), 2, "one attempt, one retry");
    assert_eq!(
        api[0].header_str("x-tts-access-token"),
        Some("TTP_access_1")
    );
    assert_eq!(
        api[1].header_str("x-tts-access-token"),
        Some("TTP_access_2")
    );
    assert!(api
        .iter()
        .all(|r| r.signature.ok && r.body == body.as_bytes()));
    assert_eq!(world.grants(), 2);

    // A token that is rejected again is not retried in a loop: the answer passes through.
    world
        .endpoint
        .lock()
        .unwrap()
        .rejected_tokens
        .extend(["TTP_access_2".into(), "TTP_access_3".into()]);
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.contains("105002"), "{text}");
    assert_eq!(world.grants(), 3, "exactly one more refresh");
    assert_eq!(world.api_requests().len(), 4);
}

/// A world whose API rejects the first access token with a "token expired" answer framed as
/// given, a proxy in front of it, and a client through that proxy.
async fn rejecting_first_token(
    chunked: bool,
    gzip: bool,
) -> (World, ProxyHarness, reqwest::Client) {
    let world = World::new();
    {
        let mut ep = world.endpoint.lock().unwrap();
        ep.rejected_tokens = vec!["TTP_access_1".into()];
        ep.reject_chunked = chunked;
        ep.reject_gzip = gzip;
    }
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    (world, proxy, client)
}

/// One request: the client sees the retried, successful answer after one refresh.
async fn assert_refreshed_and_retried(world: &World, client: &reqwest::Client) {
    let resp = client
        .get(format!("http://{HOST}/order/202309/orders"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["ok"], true, "the retried answer: {echo}");
    assert_eq!(world.api_requests().len(), 2, "one attempt, one retry");
    assert_eq!(world.grants(), 2);
}

/// The "token expired" answer has no declared length (chunked, as gateways send): it is still
/// recognised; and a long chunked answer on a managed token streams through byte for byte.
#[tokio::test]
async fn chunked_token_expired_answer_is_recognised_and_long_answers_stream_intact() {
    let (world, _proxy, client) = rejecting_first_token(true, false).await;
    assert_refreshed_and_retried(&world, &client).await;

    // 200 KB streamed chunked: more than is inspected, so it is relayed as it comes.
    world
        .upstream
        .push_behaviour(Behaviour::stream(200_000, 7_000));
    let resp = client
        .get(format!("http://{HOST}/product/202309/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), 200_000);
    assert!(bytes[..] == pattern_bytes(0, 200_000)[..], "body altered");
    assert_eq!(world.grants(), 2, "no refresh for a long answer");
}

/// Python requests and most clients send `Accept-Encoding: gzip`: a gzip-encoded, chunked
/// "token expired" answer is still recognised.
#[tokio::test]
async fn gzip_token_expired_answer_is_recognised() {
    let (world, _proxy, client) = rejecting_first_token(true, true).await;
    assert_refreshed_and_retried(&world, &client).await;
}

#[tokio::test]
async fn token_endpoint_down_is_503_then_recovers() {
    let world = World::new();
    world.endpoint.lock().unwrap().down = true;
    let proxy = world.proxy(&World::tiktok_config("rt-0")).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-signproxy-error"], "token_unavailable");
    let body = response_json(resp).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tiktok.default") && message.contains("HTTP 503"),
        "{message}"
    );
    assert!(!message.contains(TIKTOK_APP_SECRET));
    assert!(
        world.api_requests().is_empty(),
        "nothing is sent without a token"
    );

    world.endpoint.lock().unwrap().down = false;
    // Past the first cooldown (1 s), the next request tries again and succeeds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        world
            .upstream
            .last_request()
            .header_str("x-tts-access-token"),
        Some("TTP_access_1")
    );
}

#[tokio::test]
async fn restart_resumes_from_the_persisted_rotated_refresh_token() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let config = World::tiktok_config("rt-0").replace("@STATE@", &state.path().to_string_lossy());

    let first = world.proxy(&config).await;
    assert_eq!(get(&first, &world.ca, "/a").await.0, 200);
    first.stop().await;
    let file = state.path().join("tokens.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        stored.contains("rt-1") && !stored.contains("rt-0"),
        "{stored}"
    );
    // The process dies after writing the next state's temp file, before the rename.
    signproxy::token::store::write_temp(
        &file,
        b"{\"version\":1,\"profiles\":{\"tiktok.default\":{\"se",
    )
    .unwrap();

    let second = world.proxy(&config).await;
    assert_eq!(get(&second, &world.ca, "/b").await.0, 200);
    assert_eq!(
        world.grants(),
        1,
        "the stored access token is still valid: no grant"
    );
    assert_eq!(
        world
            .upstream
            .last_request()
            .header_str("x-tts-access-token"),
        Some("TTP_access_1")
    );
    // Force a refresh: it must use the rotated token, not the config's.
    world.endpoint.lock().unwrap().rejected_tokens = vec!["TTP_access_1".into()];
    assert_eq!(get(&second, &world.ca, "/c").await.0, 200);
    assert_eq!(
        world.endpoint.lock().unwrap().seen,
        vec!["rt-0".to_owned(), "rt-1".to_owned()]
    );
    second.stop().await;

    // A new authorization in the config wins over the stored descendants of the old one.
    let third = world
        .proxy(
            &World::tiktok_config("rt-fresh").replace("@STATE@", &state.path().to_string_lossy()),
        )
        .await;
    world.endpoint.lock().unwrap().rejected_tokens.clear();
    assert_eq!(get(&third, &world.ca, "/d").await.0, 200);
    assert_eq!(
        world
            .endpoint
            .lock()
            .unwrap()
            .seen
            .last()
            .map(String::as_str),
        Some("rt-fresh")
    );
}

#[tokio::test]
async fn corrupt_token_file_is_set_aside_not_overwritten() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("tokens.json"), b"garbage{").unwrap();
    let config = World::tiktok_config("rt-0").replace("@STATE@", &state.path().to_string_lossy());
    let proxy = world.proxy(&config).await;
    assert_eq!(get(&proxy, &world.ca, "/a").await.0, 200);
    let aside: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tokens.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"garbage{");
    assert!(std::fs::read_to_string(state.path().join("tokens.json"))
        .unwrap()
        .contains("rt-1"));
}

fn ebay_config(extra: &str) -> String {
    test_config(
        "",
        "",
        &format!(
            "[ebay.default]\nprivate_key = \"\"\"\n{}\"\"\"\njwe = \"jwe\"\nclient_id = \"app-id\"\nclient_secret = \"cl-secret\"\n{extra}",
            common::keys::RFC9421_ED25519_PRIVATE_PEM
        ),
    )
}

#[tokio::test]
async fn ebay_application_token_by_client_credentials() {
    let world = World::new();
    world.endpoint.lock().unwrap().lifetime = 7200;
    let proxy = world.proxy(&ebay_config("")).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let resp = client
        .get("http://api.ebay.com/buy/browse/v1/item_summary/search?q=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ep = world.endpoint.lock().unwrap();
    assert_eq!(
        ep.authorizations,
        vec!["Basic YXBwLWlkOmNsLXNlY3JldA==".to_owned()]
    );
    assert_eq!(
        ep.seen,
        vec![
            "grant_type=client_credentials&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope"
                .to_owned()
        ]
    );
    let api = world.api_requests();
    assert_eq!(
        api[0].header_str("authorization"),
        Some("Bearer v^1.1#ebay_1")
    );
    // The token endpoint call itself is never signed.
    let token_call = world
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.path().contains("oauth2"))
        .unwrap();
    assert!(!token_call.has_header("signature"));
}

#[tokio::test]
async fn ebay_user_token_by_refresh_grant_and_retry_on_1001() {
    let world = World::new();
    world.endpoint.lock().unwrap().lifetime = 7200;
    world.endpoint.lock().unwrap().rejected_tokens = vec!["v^1.1#ebay_1".into()];
    let config = ebay_config(&format!(
        "refresh_token = \"{EBAY_RT}\"\nscopes = [\"https://api.ebay.com/oauth/api_scope/sell.finances\"]\n"
    ));
    let proxy = world.proxy(&config).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let resp = client
        .post("http://apiz.ebay.com/sell/finances/v1/transaction")
        .body("{\"x\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the client sees the retried answer");
    let resp = client
        .get("http://api.ebay.com/sell/fulfillment/v1/order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tokens: Vec<Option<String>> = world
        .upstream
        .requests()
        .iter()
        .filter(|r| !r.path().contains("oauth2"))
        .map(|r| r.header_str("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        tokens,
        vec![
            Some("Bearer v^1.1#ebay_1".to_owned()),
            Some("Bearer v^1.1#ebay_2".to_owned()),
            Some("Bearer v^1.1#ebay_2".to_owned()),
        ],
        "rejected with 1001, refreshed once, retried; then the new token is reused"
    );
    let ep = world.endpoint.lock().unwrap();
    let decoded: Vec<(String, String)> = form_urlencoded::parse(ep.seen[0].as_bytes())
        .into_owned()
        .collect();
    assert_eq!(decoded[0], ("grant_type".into(), "refresh_token".into()));
    assert_eq!(
        decoded[1],
        ("refresh_token".into(), EBAY_RT.into()),
        "special characters survive form encoding"
    );
    assert_eq!(
        decoded[2],
        (
            "scope".into(),
            "https://api.ebay.com/oauth/api_scope/sell.finances".into()
        )
    );
    assert_eq!(
        world.grants(),
        2,
        "one grant, one refresh after errorId 1001"
    );
    let last = world.upstream.last_request();
    assert_eq!(
        last.header_str("authorization"),
        Some("Bearer v^1.1#ebay_2")
    );
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn token_flows_never_log_secrets_or_token_urls() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // #[tokio::test] runs every task of this test on this one thread: a thread-local subscriber
    // sees the proxy's logs too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let world = World::new();
    world.endpoint.lock().unwrap().rejected_tokens = vec!["TTP_access_1".into()];
    let proxy = world.proxy(&World::tiktok_config("RT-LEAKCHECK-0")).await;
    assert_eq!(get(&proxy, &world.ca, "/a?page_token=zzz").await.0, 200);
    world.endpoint.lock().unwrap().down = true;
    world
        .endpoint
        .lock()
        .unwrap()
        .rejected_tokens
        .push("TTP_access_2".into());
    let _ = get(&proxy, &world.ca, "/b").await;
    proxy.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("access token refreshed"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains("access token refresh failed"), "{logs}");
    for secret in [
        TIKTOK_APP_SECRET,
        "RT-LEAKCHECK-0",
        "rt-1",
        "rt-2",
        "TTP_access_1",
        "TTP_access_2",
        "page_token",
        "token/refresh?",
    ] {
        assert!(!logs.contains(secret), "logs leak {secret:?}:\n{logs}");
    }
}
