//! End to end, Lazada and AliExpress (the IOP gateway): real clients (reqwest, absolute-form and
//! CONNECT) → the real proxy → a TLS test upstream for `api.lazada.sg`, `auth.lazada.com` and
//! `api-sg.aliexpress.com`; every signature is checked with `verify_iop`, written from the spec
//! apart from the signer, and bodies are compared byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::proxy::{test_config, ProxyHarness};
use common::verify_iop::{self, verify_iop, IopRules, ALIEXPRESS, LAZADA};
use common::*;
use signproxy::clock::{Clock as _, ManualClock, SharedClock, Timestamp};

const LAZADA_HOST: &str = "api.lazada.sg";
const LAZADA_AUTH: &str = "auth.lazada.com";
const ALI_HOST: &str = "api-sg.aliexpress.com";
const LZ_KEY: &str = "100001";
const LZ_SECRET: &str = "lazada-test-secret-3e1f";
const AE_KEY: &str = "500002";
const AE_SECRET: &str = "aliexpress-test-secret-7a0b";
const STATIC_TOKEN: &str = "50000600a12static-token";

fn profiles(lazada_extra: &str) -> String {
    format!(
        "[lazada.default]\napp_key = \"{LZ_KEY}\"\napp_secret = \"{LZ_SECRET}\"\n{lazada_extra}\n\
         [aliexpress.default]\napp_key = \"{AE_KEY}\"\napp_secret = \"{AE_SECRET}\"\naccess_token = \"{STATIC_TOKEN}\"\n"
    )
}

async fn setup() -> (TestCa, TestUpstream, ProxyHarness) {
    verify_iop::self_check();
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::None);
    let config = test_config(
        "",
        "",
        &profiles(&format!("access_token = \"{STATIC_TOKEN}\"")),
    );
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

fn assert_iop(r: &Received, key: &str, secret: &str, rules: IopRules) {
    if let Err(e) = verify_iop(r, key, secret, rules) {
        panic!("upstream rejects the signature: {e}\n{}", r.path_and_query);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// GET through both proxy modes: the client's query kept byte for byte, the system params and
/// the token added to it, a millisecond timestamp, TLS to the marketplace's name.
#[tokio::test]
async fn lazada_get_is_signed_in_both_proxy_modes() {
    let (ca, upstream, proxy) = setup().await;
    let query = "created_after=2017-02-10T09%3A00%3A00%2B08%3A00&status=shipped&q=red+shoes";
    for (client, scheme) in [
        (reqwest_via_proxy(proxy.addr, &ca.ca_pem()), "http"),
        (
            reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem()),
            "https",
        ),
    ] {
        upstream.clear_requests();
        let resp = client
            .get(format!("{scheme}://{LAZADA_HOST}/rest/orders/get?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
        let r = upstream.last_request();
        assert_iop(&r, LZ_KEY, LZ_SECRET, LAZADA);
        assert_eq!(r.tls_sni.as_deref(), Some(LAZADA_HOST), "{scheme}");
        assert_eq!(r.header_str("host"), Some(LAZADA_HOST));
        assert_eq!(r.path(), "/rest/orders/get");
        let sent = r.query().unwrap();
        assert!(sent.starts_with(&format!("{query}&")), "{scheme}: {sent}");
        assert_eq!(r.query_param("access_token").as_deref(), Some(STATIC_TOKEN));
        assert_eq!(r.query_param("sign_method").as_deref(), Some("sha256"));
        let ts: u64 = r.query_param("timestamp").unwrap().parse().unwrap();
        assert!(ts.abs_diff(now_ms()) < 60_000, "ms timestamp {ts}");
        assert!(r.body.is_empty());
    }
}

/// A client's stale system params in the query are replaced, never duplicated.
#[tokio::test]
async fn stale_query_copies_are_replaced() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!(
            "http://{LAZADA_HOST}/rest/seller/get?app_key=other&timestamp=1517820392&sign_method=md5&sign=abcdef&access_token=old"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_iop(&r, LZ_KEY, LZ_SECRET, LAZADA);
    for key in [
        "app_key",
        "timestamp",
        "sign_method",
        "sign",
        "access_token",
    ] {
        assert_eq!(r.query_params(key).len(), 1, "{key}: {}", r.path_and_query);
    }
    assert_eq!(r.query_param("access_token").as_deref(), Some(STATIC_TOKEN));
}

/// A form POST reaches the upstream exactly as the client sent it; its decoded fields are in
/// the signature (the verifier reads them from the body) and the system params in the query.
#[tokio::test]
async fn form_post_body_arrives_untouched_and_signed() {
    let (ca, upstream, proxy) = setup().await;
    let body = "payload=%7B%22Request%22%3A%7B%22Product%22%3A%7B%22name%22%3A%22Gr%C3%BC%C3%9Fe+%E6%9D%B1%E4%BA%AC%22%7D%7D%7D&note=a%2Bb+c";
    for (client, scheme) in [
        (reqwest_via_proxy(proxy.addr, &ca.ca_pem()), "http"),
        (
            reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem()),
            "https",
        ),
    ] {
        let resp = client
            .post(format!("{scheme}://{LAZADA_HOST}/rest/product/create"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
        let r = upstream.last_request();
        assert_iop(&r, LZ_KEY, LZ_SECRET, LAZADA);
        assert_eq!(r.body, body.as_bytes(), "{scheme}: body byte for byte");
        assert_eq!(
            r.header_str("content-length"),
            Some(body.len().to_string().as_str())
        );
        // Taking the form fields out of the signature must break it: they are signed.
        let mut without_body = r.clone();
        without_body.body.clear();
        assert!(verify_iop(&without_body, LZ_KEY, LZ_SECRET, LAZADA).is_err());
    }
}

/// AliExpress business APIs: `POST /sync` with `method` in the form, signed with no prefix.
#[tokio::test]
async fn aliexpress_sync_form_is_signed_without_prefix() {
    let (_ca, upstream, proxy) = setup().await;
    let body = "method=aliexpress.solution.product.schema.get&aliexpress_category_id=200135143";
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let resp = client
        .post(format!("https://{ALI_HOST}/sync"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_iop(&r, AE_KEY, AE_SECRET, ALIEXPRESS);
    assert_eq!(r.tls_sni.as_deref(), Some(ALI_HOST));
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.query_param("access_token").as_deref(), Some(STATIC_TOKEN));
    // The same request judged with a `/sync` prefix fails: the prefix really is left out.
    let sign = r.query_param("sign").unwrap();
    let base = verify_iop::iop_base_string(&r, ALIEXPRESS).unwrap();
    let mut prefixed = b"/sync".to_vec();
    prefixed.extend_from_slice(&base);
    assert_ne!(verify_iop::iop_hmac(AE_SECRET, &prefixed), sign);
}

/// Multipart: text fields are signed, the file part is not, and the body goes on as sent.
#[tokio::test]
async fn multipart_text_fields_are_signed_and_the_body_kept() {
    let (ca, upstream, proxy) = setup().await;
    let mut body = Vec::new();
    body.extend_from_slice(b"--IopBound\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n<Request><Image/></Request>\r\n");
    body.extend_from_slice(b"--IopBound\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n");
    body.extend_from_slice(&pattern_bytes(0, 40_000));
    body.extend_from_slice(b"\r\n--IopBound--\r\n");
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(format!("http://{LAZADA_HOST}/rest/image/upload"))
        .header("content-type", "multipart/form-data; boundary=IopBound")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_iop(&r, LZ_KEY, LZ_SECRET, LAZADA);
    assert_eq!(r.body, body);
}

/// The app's own authorization call (`/rest/auth/token/create` on `auth.lazada.com`) is signed
/// with its API name and gets no access token, though the profile has one.
#[tokio::test]
async fn auth_token_create_is_signed_without_an_access_token() {
    let (_ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let body = "code=0_100001_abcDEF%2B123";
    let resp = client
        .post(format!("https://{LAZADA_AUTH}/rest/auth/token/create"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_iop(&r, LZ_KEY, LZ_SECRET, LAZADA);
    assert_eq!(r.tls_sni.as_deref(), Some(LAZADA_AUTH));
    assert_eq!(r.query_param("access_token"), None, "{}", r.path_and_query);
    assert_eq!(r.body, body.as_bytes());
}

/// A body that carries a system parameter is refused with 400 before anything goes upstream:
/// the proxy never edits a body.
#[tokio::test]
async fn system_param_in_the_form_body_is_refused_and_nothing_sent() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(format!("http://{ALI_HOST}/sync"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("method=aliexpress.trade.seller.orderlist.get&access_token=mine")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "bad_request");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("`access_token`") && text.contains("remove it"),
        "{text}"
    );
    let resp = client
        .get(format!("http://{LAZADA_HOST}/rest/orders/get?x=1&x=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    assert_eq!(upstream.connections_accepted(), 0);
}

// ---------------------------------------------------------------------------------------------
// Managed tokens
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct TokenWorld {
    /// Refresh tokens the endpoint received, in order.
    seen: Vec<String>,
    grants: usize,
    /// The endpoint drops the connection instead of answering while set.
    lose_answers: bool,
    /// API calls with these tokens get `IllegalAccessToken`.
    rejected: Vec<String>,
    /// Seconds the access tokens live.
    lifetime: u64,
    /// Seconds the refresh tokens live (`refresh_expires_in`).
    refresh_lifetime: u64,
    /// Put before every granted token, to make them easy to search for.
    prefix: String,
}

fn token_world(ca: &TestCa) -> (TestUpstream, Arc<Mutex<TokenWorld>>) {
    let upstream = TestUpstream::start(ca, Verifier::None);
    let world = Arc::new(Mutex::new(TokenWorld {
        lifetime: 7 * 86400,
        refresh_lifetime: 30 * 86400,
        ..TokenWorld::default()
    }));
    let w = Arc::clone(&world);
    upstream.set_handler(move |r: &Received| {
        let mut w = w.lock().unwrap();
        if r.host_name().as_deref() == Some(LAZADA_AUTH) {
            assert_eq!(r.path(), "/rest/auth/token/refresh");
            assert_eq!(r.method, "POST");
            assert_iop(r, LZ_KEY, LZ_SECRET, LAZADA);
            assert!(r.query_param("access_token").is_none());
            let form: Vec<(String, String)> =
                form_urlencoded::parse(&r.body).into_owned().collect();
            let rt = form
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.clone())
                .unwrap();
            w.seen.push(rt);
            if w.lose_answers {
                return Some(Behaviour::hang_up());
            }
            w.grants += 1;
            let n = w.grants;
            let body = serde_json::json!({
                "access_token": format!("{}at-{n}", w.prefix), "refresh_token": format!("{}rt-{n}", w.prefix),
                "expires_in": w.lifetime, "refresh_expires_in": w.refresh_lifetime,
                "country": "sg", "account": "seller@example.com", "account_platform": "seller_center",
                "country_user_info": [], "code": "0", "request_id": format!("req-{n}"),
            });
            return Some(Behaviour::json(200, &body.to_string()));
        }
        assert_iop(r, LZ_KEY, LZ_SECRET, LAZADA);
        let token = r.query_param("access_token").unwrap_or_default();
        if w.rejected.contains(&token) {
            return Some(Behaviour::json(
                200,
                r#"{"type":"ISV","code":"IllegalAccessToken","message":"The specified access token is invalid or expired","request_id":"r"}"#,
            ));
        }
        None
    });
    (upstream, world)
}

fn managed_config(state: &std::path::Path, refresh_token: &str) -> String {
    test_config(
        "",
        "",
        &profiles(&format!("refresh_token = \"{refresh_token}\"")),
    )
    .replace("@STATE@", &state.to_string_lossy())
}

async fn lazada_get(proxy: &ProxyHarness, ca: &TestCa) -> (u16, String) {
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{LAZADA_HOST}/rest/orders/get?limit=10"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn stored(state: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(state.join("tokens.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["profiles"]["lazada.default"].clone()
}

/// The first call obtains a token with the configured refresh token; `IllegalAccessToken`
/// refreshes with the rotated one and retries, signed afresh; a restart resumes from the
/// rotated refresh token; the refresh token's expiry is not extended by rotation.
#[tokio::test]
async fn tokens_refresh_rotate_and_survive_a_restart() {
    let ca = TestCa::new();
    let (upstream, world) = token_world(&ca);
    let state = tempfile::tempdir().unwrap();
    let config = managed_config(state.path(), "rt-0");

    let first = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    assert_eq!(lazada_get(&first, &ca).await.0, 200);
    assert_eq!(
        upstream
            .last_request()
            .query_param("access_token")
            .as_deref(),
        Some("at-1")
    );
    let first_refresh_expiry = stored(state.path())["refresh_expires_at"].as_u64().unwrap();

    world.lock().unwrap().rejected.push("at-1".into());
    // Let the clock move on, so a renewed refresh lifetime would show as a later expiry.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = lazada_get(&first, &ca).await;
    assert_eq!(status, 200, "{body}");
    let retried = upstream.last_request();
    assert_eq!(retried.query_param("access_token").as_deref(), Some("at-2"));
    assert_iop(&retried, LZ_KEY, LZ_SECRET, LAZADA);
    assert_eq!(world.lock().unwrap().seen, vec!["rt-0", "rt-1"]);
    let after = stored(state.path());
    assert_eq!(after["refresh_token"], "rt-2");
    assert_eq!(
        after["refresh_expires_at"].as_u64().unwrap(),
        first_refresh_expiry,
        "a rotated Lazada refresh token keeps the original expiry"
    );
    first.stop().await;

    let second = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    assert_eq!(lazada_get(&second, &ca).await.0, 200);
    assert_eq!(
        upstream
            .last_request()
            .query_param("access_token")
            .as_deref(),
        Some("at-2")
    );
    world.lock().unwrap().rejected.push("at-2".into());
    assert_eq!(lazada_get(&second, &ca).await.0, 200);
    assert_eq!(
        world.lock().unwrap().seen,
        vec!["rt-0", "rt-1", "rt-2"],
        "the restart refreshed with the rotated token, not the config's"
    );
}

/// A refresh whose answer never arrives keeps the previous pair: the still-valid access token
/// serves requests, and the next refresh presents the previous refresh token again.
#[tokio::test]
async fn a_lost_refresh_answer_keeps_the_previous_pair() {
    let ca = TestCa::new();
    let (upstream, world) = token_world(&ca);
    world.lock().unwrap().lifetime = 3600;
    let state = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_millis(now_ms()));
    let shared: SharedClock = clock.clone();
    let proxy = ProxyHarness::start_with_clock(
        &managed_config(state.path(), "rt-0"),
        &ca,
        Some(&upstream),
        shared,
    )
    .await;
    assert_eq!(lazada_get(&proxy, &ca).await.0, 200);
    assert_eq!(world.lock().unwrap().seen, vec!["rt-0"]);

    // Inside the refresh margin, still valid: the refresh's answer is lost.
    clock.advance_secs(3400);
    world.lock().unwrap().lose_answers = true;
    let (status, body) = lazada_get(&proxy, &ca).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        upstream
            .last_request()
            .query_param("access_token")
            .as_deref(),
        Some("at-1")
    );
    assert_eq!(world.lock().unwrap().seen, vec!["rt-0", "rt-1"]);
    assert_eq!(
        stored(state.path())["refresh_token"],
        "rt-1",
        "the previous pair is kept"
    );
    assert_eq!(stored(state.path())["access_token"], "at-1");

    world.lock().unwrap().lose_answers = false;
    clock.advance_secs(5);
    assert_eq!(lazada_get(&proxy, &ca).await.0, 200);
    assert_eq!(
        world.lock().unwrap().seen,
        vec!["rt-0", "rt-1", "rt-1"],
        "the next refresh presents the previous refresh token"
    );
    assert_eq!(
        upstream
            .last_request()
            .query_param("access_token")
            .as_deref(),
        Some("at-2")
    );
    assert!(clock.now().secs() > 0);
}

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

/// Debug logs of a whole token life (grant, expired answer, refresh, retry) hold no secret, no
/// token and no query (which carries the token and `sign`); a refresh token that refreshing does
/// not extend is warned about while there is time to authorize again.
#[tokio::test]
async fn token_flows_never_log_secrets_and_warn_before_the_refresh_token_runs_out() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A thread-local subscriber sees the proxy's logs (#[tokio::test] is single-threaded); a
    // second Dispatch keeps callsite interest from being cached by another thread (see
    // tokens_e2e.rs).
    let _guard = tracing::subscriber::set_default(subscriber);
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    let ca = TestCa::new();
    let (upstream, world) = token_world(&ca);
    {
        let mut w = world.lock().unwrap();
        w.prefix = "LEAK-".into();
        w.refresh_lifetime = 3 * 86400;
        w.rejected.push("LEAK-at-1".into());
    }
    let state = tempfile::tempdir().unwrap();
    let proxy = ProxyHarness::start(
        &managed_config(state.path(), "RT-LEAKCHECK-0"),
        &ca,
        Some(&upstream),
    )
    .await;
    assert_eq!(lazada_get(&proxy, &ca).await.0, 200);
    assert_eq!(
        world.lock().unwrap().seen,
        vec!["RT-LEAKCHECK-0", "LEAK-rt-1"]
    );
    proxy.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("access token refreshed"),
        "logs were captured: {logs}"
    );
    assert!(
        logs.contains("the refresh token expires soon"),
        "warned ahead of the refresh token's end: {logs}"
    );
    for secret in [
        LZ_SECRET,
        "RT-LEAKCHECK-0",
        "LEAK-rt-",
        "LEAK-at-",
        "limit=10",
        "token/refresh?",
        "sign=",
    ] {
        assert!(!logs.contains(secret), "logs leak {secret:?}:\n{logs}");
    }
}
