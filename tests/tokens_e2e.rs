//! End to end, token lifecycle: the proxy obtains, refreshes, persists and retries access tokens
//! against a local TLS stand-in for TikTok's and eBay's token endpoints (reached via connect_to).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{test_config, ProxyHarness, TIKTOK_APP_KEY, TIKTOK_APP_SECRET};
use common::*;
use signproxy::clock::{Clock as _, ManualClock, SharedClock, Timestamp};

const HOST: &str = "open-api.tiktokglobalshop.com";
const EBAY_RT: &str = "v^1.1#i^1#r^1#f^0#p^3#I^3#t^Ul4x+MF8/Rl4=";

/// A `content-encoding` name and the function that encodes a body that way.
type Encoding = (&'static str, fn(&[u8]) -> Vec<u8>);

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
    /// ... with this `content-encoding`, the body encoded by the function.
    reject_encoding: Option<Encoding>,
    /// The test clock the proxy reads, when it runs on one: grants then expire `lifetime` after
    /// its now rather than the machine's.
    clock: Option<Arc<ManualClock>>,
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
                // As the token URL names it: no default port, nothing else.
                assert_eq!(r.header_str("host"), Some("auth.tiktok-shops.com"));
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
                let b = match &ep.clock {
                    Some(clock) => tiktok_grant_until(n, clock.now().secs() + ep.lifetime),
                    None => Behaviour::tiktok_grant(
                        &format!("TTP_access_{n}"),
                        &format!("rt-{n}"),
                        ep.lifetime,
                    ),
                };
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
                let answer = match ep.reject_encoding {
                    Some((name, encode)) => {
                        let plain = answer.body.clone().unwrap_or_default();
                        Behaviour {
                            body: Some(encode(&plain)),
                            ..answer
                        }
                        .with_header("content-encoding", name)
                    }
                    None => answer,
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

    /// The proxy reading time from `clock`, which the token endpoint's grants follow too (the
    /// TLS handshakes keep the machine's time).
    async fn proxy_with_clock(&self, config: &str, clock: &Arc<ManualClock>) -> ProxyHarness {
        self.endpoint.lock().unwrap().clock = Some(Arc::clone(clock));
        let shared: SharedClock = clock.clone();
        ProxyHarness::start_with_clock(config, &self.ca, Some(&self.upstream), shared).await
    }

    /// Every call the TikTok token endpoint received, answered or refused.
    fn token_calls(&self) -> usize {
        self.endpoint.lock().unwrap().seen.len()
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

/// TikTok's grant for the `n`th token, expiring at `expires_at` (TikTok sends absolute times).
fn tiktok_grant_until(n: usize, expires_at: u64) -> Behaviour {
    let body = serde_json::json!({
        "code": 0, "message": "success", "request_id": "t",
        "data": {
            "access_token": format!("TTP_access_{n}"),
            "access_token_expire_in": expires_at,
            "refresh_token": format!("rt-{n}"),
            "refresh_token_expire_in": expires_at + 30 * 86400,
        }
    });
    Behaviour::json(200, &body.to_string())
}

/// Unix seconds from the machine's clock: the reference the proxy's own clock is judged by.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The store's `seed` for a TikTok profile, computed here from its definition (the first 12
/// bytes of SHA-256 over `tiktok`, the app key and the configured refresh token, NUL-separated,
/// in hex) rather than by signproxy.
fn tiktok_seed(app_key: &str, refresh_token: &str) -> String {
    let input = format!("tiktok\0{app_key}\0{refresh_token}");
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, input.as_bytes()).as_ref()[..12])
}

fn gzip(plain: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, plain).unwrap();
    gz.finish().unwrap()
}

/// HTTP's `deflate` is the zlib format (RFC 9110 §8.4.1.2), not a raw deflate stream.
fn deflate(plain: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, plain).unwrap();
    z.finish().unwrap()
}

/// A valid brotli stream (RFC 7932) of `plain`, made of uncompressed meta-blocks so that no
/// brotli library is needed: WBITS 16 (one 0 bit), then per block of up to 64 KiB: ISLAST=0,
/// MNIBBLES=4, MLEN-1, ISUNCOMPRESSED=1, zero bits to the byte boundary, the bytes; then an
/// empty last meta-block (ISLAST=1, ISLASTEMPTY=1). `curl --compressed` decodes it to `plain`.
fn brotli_stored(plain: &[u8]) -> Vec<u8> {
    if plain.is_empty() {
        return vec![0b110];
    }
    let mut out = Vec::new();
    for (i, block) in plain.chunks(1 << 16).enumerate() {
        let mlen_minus_1 = u32::try_from(block.len() - 1).unwrap();
        let meta_header = (mlen_minus_1 << 3) | (1 << 19);
        // Only the first block follows the stream's WBITS bit; later ones start on a byte.
        let bits = if i == 0 {
            meta_header << 1
        } else {
            meta_header
        };
        out.extend_from_slice(&bits.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
    out.push(0b11);
    out
}

/// Not encoded at all: the bytes of the answer as they are.
fn unencoded(plain: &[u8]) -> Vec<u8> {
    plain.to_vec()
}

/// TikTok's "access token expired" body, as the test world sends it before encoding.
fn tiktok_expired_body() -> Vec<u8> {
    Behaviour::tiktok_error(200, 105002, "access token expired")
        .body
        .unwrap()
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
}

const EBAY_TOKEN_PATH: &str = "/identity/v1/oauth2/token";

/// README: "A request that brings its own token (`x-tts-access-token`, `Authorization`,
/// `X-EBAY-API-IAF-TOKEN`) is left alone", and eBay's token endpoint "passes unsigned". On a
/// fresh proxy (no token cached, none stored) whose token endpoints only answer 500, such
/// requests must not touch a token endpoint at all: they are forwarded, signed where the
/// marketplace signs, with the client's credential as sent. Requests without a credential then
/// show that the endpoints are counted and failing.
#[tokio::test]
async fn own_credentials_and_the_ebay_token_endpoint_fetch_nothing_from_a_failing_endpoint() {
    let ca = TestCa::new();
    let ebay_key = EbayTestKey::rfc9421_ed25519();
    let upstream = TestUpstream::start(
        &ca,
        Verifier::ByHost(vec![
            (
                HOST.into(),
                Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET),
            ),
            (
                "api.ebay.com".into(),
                Verifier::ebay(ebay_key.public.clone()),
            ),
        ]),
    );
    // The profiles' token endpoints: TikTok's, and eBay's moved to `localhost` (through
    // `token_url`) so that a client's own call to api.ebay.com's token path is not counted.
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    upstream.set_handler(move |r: &Received| {
        let host = r.host_name().unwrap_or_default();
        let tiktok = host == "auth.tiktok-shops.com";
        let ebay = host == "localhost" && r.path() == EBAY_TOKEN_PATH;
        (tiktok || ebay).then(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            Behaviour::json(500, r#"{"error":"server_error"}"#)
        })
    });
    let profiles = format!(
        "[tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\nrefresh_token = \"rt-0\"\n\n\
         [ebay.default]\nprivate_key = \"\"\"\n{}\"\"\"\njwe = \"jwe\"\nclient_id = \"app-id\"\nclient_secret = \"cl-secret\"\n\
         refresh_token = \"{EBAY_RT}\"\ntoken_url = \"https://localhost{EBAY_TOKEN_PATH}\"\n",
        common::keys::RFC9421_ED25519_PRIVATE_PEM
    );
    let proxy = ProxyHarness::start(&test_config("", "", &profiles), &ca, Some(&upstream)).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());

    // TikTok, the client's own access token.
    let resp = client
        .get(format!("http://{HOST}/order/202309/orders?page_size=5"))
        .header("x-tts-access-token", "TTP_client_own")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = upstream.last_request();
    assert_eq!(r.header_all("x-tts-access-token"), [b"TTP_client_own"]);
    assert!(r.signature.ok, "signed: {:?}", r.signature.error);

    // eBay REST, the client's own Authorization.
    let resp = client
        .get("http://api.ebay.com/sell/fulfillment/v1/order")
        .header("authorization", "Bearer v^1.1#client_own")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = upstream.last_request();
    assert_eq!(r.header_all("authorization"), [b"Bearer v^1.1#client_own"]);
    assert_eq!(r.signature.scheme, "ebay");
    assert!(r.signature.ok, "signed: {:?}", r.signature.error);

    // eBay Trading API, the client's own IAF token.
    let xml = "<?xml version=\"1.0\"?><GeteBayOfficialTimeRequest/>";
    let resp = client
        .post("http://api.ebay.com/ws/api.dll")
        .header("x-ebay-api-iaf-token", "v^1.1#client_iaf")
        .header("x-ebay-api-call-name", "GeteBayOfficialTime")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = upstream.last_request();
    assert_eq!(r.header_all("x-ebay-api-iaf-token"), [b"v^1.1#client_iaf"]);
    assert!(!r.has_header("authorization"), "no token added beside it");
    assert_eq!(r.body, xml.as_bytes());
    assert!(r.signature.ok, "signed: {:?}", r.signature.error);

    // eBay's token endpoint path, with no credential at all: only the path exempts it.
    let form = "grant_type=client_credentials&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope";
    let resp = client
        .post(format!("http://api.ebay.com{EBAY_TOKEN_PATH}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = upstream.last_request();
    assert_eq!(r.host_name().as_deref(), Some("api.ebay.com"));
    assert_eq!(r.path(), EBAY_TOKEN_PATH);
    assert_eq!(r.body, form.as_bytes());
    for name in [
        "authorization",
        "signature",
        "signature-input",
        "x-ebay-signature-key",
        "content-digest",
    ] {
        assert!(!r.has_header(name), "the token endpoint call got {name}");
    }

    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        0,
        "no token endpoint was asked for a token"
    );
    assert_eq!(upstream.requests().len(), 4, "all four were forwarded");

    // Control: without a credential, each profile does need a token, and cannot get one.
    for url in [
        format!("http://{HOST}/order/202309/orders"),
        "http://api.ebay.com/sell/fulfillment/v1/order".to_owned(),
    ] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 503, "{url}");
        assert_eq!(resp.headers()["x-signproxy-error"], "token_unavailable");
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        2,
        "one call per profile"
    );
    assert_eq!(
        upstream.requests().len(),
        6,
        "the two calls to the token endpoints, nothing to the APIs"
    );
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

/// README: "short-lived tokens at half their life". On a manual clock, 4 s tokens: the cached
/// one serves until 2 s have passed, and the request at 2 s refreshes it.
#[tokio::test]
async fn a_token_near_expiry_is_refreshed_ahead_of_time() {
    let world = World::new();
    world.endpoint.lock().unwrap().lifetime = 4;
    let t0 = unix_now();
    let clock = ManualClock::new(Timestamp::from_secs(t0));
    let proxy = world
        .proxy_with_clock(&World::tiktok_config("rt-0"), &clock)
        .await;
    assert_eq!(get(&proxy, &world.ca, "/a").await.0, 200);
    assert_eq!(world.grants(), 1);
    clock.set(Timestamp::from_millis((t0 + 2) * 1000 - 1));
    assert_eq!(get(&proxy, &world.ca, "/a-bit-later").await.0, 200);
    assert_eq!(world.grants(), 1, "not yet half its life");
    clock.set(Timestamp::from_secs(t0 + 2));
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
    encoding: Option<Encoding>,
) -> (World, ProxyHarness, reqwest::Client) {
    let world = World::new();
    {
        let mut ep = world.endpoint.lock().unwrap();
        ep.rejected_tokens = vec!["TTP_access_1".into()];
        ep.reject_chunked = chunked;
        ep.reject_encoding = encoding;
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
    let (world, _proxy, client) = rejecting_first_token(true, None).await;
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
    let (world, _proxy, client) = rejecting_first_token(true, Some(("gzip", gzip))).await;
    assert_refreshed_and_retried(&world, &client).await;
}

/// README: "gzip/deflate-encoded answers included". HTTP's deflate (zlib), with a length.
#[tokio::test]
async fn deflate_token_expired_answer_is_recognised() {
    let (world, _proxy, client) = rejecting_first_token(false, Some(("deflate", deflate))).await;
    assert_refreshed_and_retried(&world, &client).await;
}

/// README: "A `br`-encoded answer is not inspected." A "token expired" answer sent as brotli
/// reaches the client as the upstream sent it: no refresh, no retry, the same bytes. Twice: as
/// a real brotli stream, and as bytes that would read as the answer if anything looked at
/// them, so that inspecting br answers without a decoder fails here too.
#[tokio::test]
async fn br_token_expired_answer_streams_to_the_client_untouched() {
    for (what, encode) in [
        ("a brotli stream", brotli_stored as fn(&[u8]) -> Vec<u8>),
        ("readable bytes labelled br", unencoded),
    ] {
        let (world, _proxy, client) = rejecting_first_token(false, Some(("br", encode))).await;
        let resp = client
            .get(format!("http://{HOST}/order/202309/orders"))
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(
            resp.headers().get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"br"[..]),
            "{what}: the upstream's answer, not a retried one"
        );
        let bytes = resp.bytes().await.unwrap();
        assert!(
            bytes[..] == encode(&tiktok_expired_body())[..],
            "{what}: the bytes as sent, got {bytes:?}"
        );
        assert_eq!(world.grants(), 1, "{what}: no refresh");
        assert_eq!(world.api_requests().len(), 1, "{what}: no retry");
    }
}

#[tokio::test]
async fn token_endpoint_down_is_503_then_recovers() {
    let world = World::new();
    world.endpoint.lock().unwrap().down = true;
    let clock = ManualClock::new(Timestamp::from_secs(unix_now()));
    let proxy = world
        .proxy_with_clock(&World::tiktok_config("rt-0"), &clock)
        .await;
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
    clock.advance_secs(1);
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

/// One request through the proxy: its status and `x-signproxy-error` (empty when none).
async fn status_and_error(client: &reqwest::Client, path: &str) -> (u16, String) {
    let resp = client
        .get(format!("http://{HOST}{path}"))
        .send()
        .await
        .unwrap();
    let error = resp
        .headers()
        .get("x-signproxy-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), error)
}

/// README: "A token is never injected past its expiry." The proxy runs on a manual clock; the
/// token endpoint goes down once the first token is held. One second before expiry (inside the
/// refresh window) the failed refresh falls back to the still-valid token; from the expiry
/// second on, the request gets 503 token_unavailable and nothing reaches the API.
#[tokio::test]
async fn a_token_is_never_injected_past_its_expiry_when_refreshing_fails() {
    let world = World::new();
    let t0 = unix_now();
    world.endpoint.lock().unwrap().lifetime = 3600;
    let expiry = t0 + 3600;
    let clock = ManualClock::new(Timestamp::from_secs(t0));
    let proxy = world
        .proxy_with_clock(&World::tiktok_config("rt-0"), &clock)
        .await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    assert_eq!(
        status_and_error(&client, "/first").await,
        (200, String::new())
    );
    world.endpoint.lock().unwrap().down = true;

    clock.set(Timestamp::from_secs(expiry - 1));
    assert_eq!(
        status_and_error(&client, "/last-second").await,
        (200, String::new())
    );
    assert_eq!(world.token_calls(), 2, "the refresh was tried, and failed");
    let last = world.upstream.last_request();
    assert_eq!(last.path(), "/last-second");
    assert_eq!(last.header_str("x-tts-access-token"), Some("TTP_access_1"));

    for at in [expiry, expiry + 1, expiry + 86400] {
        clock.set(Timestamp::from_secs(at));
        assert_eq!(
            status_and_error(&client, "/expired").await,
            (503, "token_unavailable".to_owned()),
            "{} s past expiry",
            at - expiry
        );
    }
    assert_eq!(
        world.api_requests().len(),
        2,
        "nothing reached the API once the token expired"
    );
    assert!(world.token_calls() >= 3, "refreshes kept being tried");
}

/// README: "refreshes back off (1 s, doubling to 60 s) until it answers". On a manual clock,
/// with the token endpoint down: a request 1 ms before each backoff ends does not call the
/// endpoint, one at its end does; the gaps double from 1 s and stay at 60 s. Once the endpoint
/// answers, the next attempt gets a token.
#[tokio::test]
async fn refresh_backoff_doubles_from_one_second_up_to_sixty() {
    let world = World::new();
    world.endpoint.lock().unwrap().down = true;
    let mut at = unix_now() * 1000;
    let clock = ManualClock::new(Timestamp::from_millis(at));
    let proxy = world
        .proxy_with_clock(&World::tiktok_config("rt-0"), &clock)
        .await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let unavailable = (503, "token_unavailable".to_owned());

    assert_eq!(status_and_error(&client, "/x").await, unavailable);
    assert_eq!(world.token_calls(), 1, "the first request tries at once");
    // Each backoff is found by probing every second's last millisecond, then the second itself:
    // the first probe that reaches the endpoint gives the gap, to the millisecond.
    let mut observed = Vec::new();
    for _ in 0..9 {
        let before = world.token_calls();
        let mut gap_ms = None;
        'probe: for secs in 1..=120u64 {
            for offset in [secs * 1000 - 1, secs * 1000] {
                clock.set(Timestamp::from_millis(at + offset));
                assert_eq!(status_and_error(&client, "/x").await, unavailable);
                if world.token_calls() > before {
                    gap_ms = Some(offset);
                    break 'probe;
                }
            }
        }
        let gap_ms = gap_ms.expect("another attempt within 120 s");
        assert_eq!(world.token_calls(), before + 1, "one attempt per backoff");
        observed.push(gap_ms);
        at += gap_ms;
    }
    assert_eq!(
        observed,
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000],
        "milliseconds between attempts"
    );
    assert!(
        world.api_requests().is_empty(),
        "nothing sent without a token"
    );

    world.endpoint.lock().unwrap().down = false;
    clock.set(Timestamp::from_millis(at + 60_000));
    assert_eq!(
        status_and_error(&client, "/back").await,
        (200, String::new())
    );
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
    // Read as the documented JSON, not through the store: the rotated refresh token replaced
    // the configured one, under the seed of the configured credential.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("rt-0"),
        "the used-up refresh token is gone: {text}"
    );
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stored["version"], 1, "{stored}");
    let profile = &stored["profiles"]["tiktok.default"];
    assert_eq!(
        profile["seed"],
        tiktok_seed(TIKTOK_APP_KEY, "rt-0"),
        "{stored}"
    );
    assert_eq!(profile["refresh_token"], "rt-1", "{stored}");
    assert_eq!(profile["access_token"], "TTP_access_1", "{stored}");
    assert!(
        profile["expires_at"].as_u64().unwrap() > unix_now(),
        "{stored}"
    );

    // The process dies after writing the next state into the store's temp file
    // (`tokens.json.tmp`, renamed over `tokens.json` once complete), before the rename. Written
    // here by hand: a complete, valid state of the same lineage, which must still not be taken.
    let unrenamed = serde_json::json!({
        "version": 1,
        "profiles": {"tiktok.default": {
            "seed": tiktok_seed(TIKTOK_APP_KEY, "rt-0"),
            "access_token": "TTP_from_the_temp_file",
            "expires_at": unix_now() + 86400,
            "obtained_at": unix_now(),
            "refresh_token": "rt-from-the-temp-file",
            "refresh_expires_at": null,
        }}
    });
    std::fs::write(state.path().join("tokens.json.tmp"), unrenamed.to_string()).unwrap();

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

/// A `tokens.json` written by hand in the documented format (what an earlier release, or an
/// operator restoring a backup, leaves) is resumed: its token is used without a grant, and its
/// refresh token for the next refresh. This also vouches for the hand-made fixtures above.
#[tokio::test]
async fn a_token_file_in_the_stored_format_is_resumed() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let file = serde_json::json!({
        "version": 1,
        "profiles": {"tiktok.default": {
            "seed": tiktok_seed(TIKTOK_APP_KEY, "rt-0"),
            "access_token": "TTP_written_by_hand",
            "expires_at": unix_now() + 86400,
            "obtained_at": unix_now(),
            "refresh_token": "rt-written-by-hand",
            "refresh_expires_at": unix_now() + 30 * 86400,
        }}
    });
    std::fs::write(state.path().join("tokens.json"), file.to_string()).unwrap();
    let config = World::tiktok_config("rt-0").replace("@STATE@", &state.path().to_string_lossy());
    let proxy = world.proxy(&config).await;
    assert_eq!(get(&proxy, &world.ca, "/a").await.0, 200);
    assert_eq!(world.grants(), 0, "the stored token is used");
    assert_eq!(
        world
            .upstream
            .last_request()
            .header_str("x-tts-access-token"),
        Some("TTP_written_by_hand")
    );
    world.endpoint.lock().unwrap().rejected_tokens = vec!["TTP_written_by_hand".into()];
    assert_eq!(get(&proxy, &world.ca, "/b").await.0, 200);
    assert_eq!(
        world.endpoint.lock().unwrap().seen,
        vec!["rt-written-by-hand".to_owned()],
        "the stored refresh token is the one refreshed with"
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
    // While a process holds exactly one Dispatch, tracing-core (0.1.36) caches a callsite's
    // interest as seen from whichever thread reaches it first (tokio-rs/tracing#3611): a token
    // log line first reached by a test running alongside, with no subscriber, would be cached
    // as unwanted and never reach this one. With a second Dispatch alive, every registered
    // subscriber is asked instead.
    let _second_dispatch = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

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
