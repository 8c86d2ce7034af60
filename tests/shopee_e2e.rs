//! End to end, Shopee Open Platform v2: real clients (reqwest) → the real proxy (absolute-form
//! and CONNECT interception) → a TLS test upstream for `partner.shopeemobile.com` that checks the
//! signature with its own verifier and records the bytes; and managed tokens against a token
//! endpoint on the same upstream (single-use refresh tokens that rotate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use common::proxy::{test_config, ProxyHarness};
use common::verify_shopee::{shopee_is_public, shopee_sign_hex};
use common::*;

const HOST: &str = "partner.shopeemobile.com";
const PARTNER_ID: u64 = 2001887;
/// Looks like hex, as Shopee's keys do: the signer must use its text, never decode it.
const PARTNER_KEY: &str = "shpk4c6e6a4d5a6c4b6e4e6f6a4d4a6b4c6e6f4e6a4d4b6c4e6f6a4d4a";
const SHOP_ID: u64 = 14701711;
const STATIC_TOKEN: &str = "59777174636562737266615546704c6d";
const REFRESH_PATH: &str = "/api/v2/auth/access_token/get";

fn verifier() -> Verifier {
    Verifier::Shopee {
        partner_id: PARTNER_ID,
        partner_key: PARTNER_KEY.to_owned(),
    }
}

fn profile(extra: &str) -> String {
    format!("[shopee.default]\npartner_id = {PARTNER_ID}\npartner_key = \"{PARTNER_KEY}\"\n{extra}")
}

fn shop_profile() -> String {
    profile(&format!(
        "shop_id = {SHOP_ID}\naccess_token = \"{STATIC_TOKEN}\"\n"
    ))
}

async fn setup_with(profile: &str) -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, verifier());
    let proxy = ProxyHarness::start(&test_config("", "", profile), &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn assert_signed(r: &Received) {
    assert_eq!(r.signature.scheme, "shopee");
    assert!(
        r.signature.ok,
        "upstream rejected the signature: {:?}",
        r.signature.error
    );
}

/// The common parameters the proxy sets, each exactly once, the timestamp in seconds near now.
fn assert_common_params(r: &Received) {
    assert_eq!(r.query_params("partner_id"), vec![PARTNER_ID.to_string()]);
    assert_eq!(r.query_params("sign").len(), 1);
    let ts = r.query_params("timestamp");
    assert_eq!(ts.len(), 1, "{}", r.path_and_query);
    let ts: u64 = ts[0].parse().unwrap();
    assert!(
        ts.abs_diff(unix_now()) < 60,
        "timestamp {ts} is seconds near now"
    );
}

#[tokio::test]
async fn shop_get_over_absolute_form_gets_the_profiles_token_and_shop_id() {
    let (ca, upstream, proxy) = setup_with(&shop_profile()).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!(
            "http://{HOST}/api/v2/product/get_item_list?offset=0&page_size=10&item_status=NORMAL&q=a+b%2Fc"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_signed(r);
    assert_eq!(
        r.tls_sni.as_deref(),
        Some(HOST),
        "sent over TLS with the host's SNI"
    );
    assert_eq!(r.header_str("host"), Some(HOST));
    assert_eq!(r.method, "GET");
    assert_eq!(r.path(), "/api/v2/product/get_item_list");
    assert!(
        r.query()
            .unwrap()
            .starts_with("offset=0&page_size=10&item_status=NORMAL&q=a+b%2Fc&"),
        "the client's params go first, byte for byte: {}",
        r.path_and_query
    );
    assert_common_params(r);
    assert_eq!(
        r.query_params("access_token"),
        vec![STATIC_TOKEN.to_owned()]
    );
    assert_eq!(r.query_params("shop_id"), vec![SHOP_ID.to_string()]);
    // Recomputed here over the spec's base string, apart from the verifier's own code path.
    let base = format!(
        "{PARTNER_ID}/api/v2/product/get_item_list{}{STATIC_TOKEN}{SHOP_ID}",
        r.query_param("timestamp").unwrap()
    );
    assert_eq!(
        r.query_param("sign").unwrap(),
        shopee_sign_hex(PARTNER_KEY, &base)
    );
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn post_json_over_connect_interception_arrives_byte_for_byte() {
    let (_ca, upstream, proxy) = setup_with(&shop_profile()).await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let body = "{ \"item_id\" :\t800000001,\n  \"name\": \"Grüße, 東京 👋\",\"price\":1.50 }\r\n";
    let resp = client
        .post(format!("https://{HOST}/api/v2/product/update_item?lang=en"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-signproxy-error").is_none());
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_signed(r);
    assert_eq!(r.tls_sni.as_deref(), Some(HOST));
    assert_eq!(r.method, "POST");
    assert_eq!(r.body, body.as_bytes(), "the body is never re-serialized");
    assert_eq!(
        r.header_str("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header_str("content-type"), Some("application/json"));
    assert!(r.query().unwrap().starts_with("lang=en&partner_id="));
    assert_common_params(r);
    assert_eq!(
        r.query_params("access_token"),
        vec![STATIC_TOKEN.to_owned()]
    );
    assert_eq!(r.query_params("shop_id"), vec![SHOP_ID.to_string()]);
}

#[tokio::test]
async fn client_copies_of_partner_id_timestamp_sign_and_token_are_replaced() {
    let (ca, upstream, proxy) = setup_with(&shop_profile()).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!(
            "http://{HOST}/api/v2/shop/get_shop_info?partner_id=1&timestamp=1655714431000&sign=ABCDEF&access_token=stale&shop_id={SHOP_ID}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_signed(&r);
    assert_common_params(&r);
    assert_eq!(
        r.query_params("access_token"),
        vec![STATIC_TOKEN.to_owned()]
    );
    assert_eq!(r.query_params("shop_id"), vec![SHOP_ID.to_string()]);
    assert!(
        r.query()
            .unwrap()
            .starts_with(&format!("shop_id={SHOP_ID}&partner_id=")),
        "the client's shop_id stays where it was: {}",
        r.path_and_query
    );
}

#[tokio::test]
async fn public_api_is_signed_without_token_or_id() {
    let (ca, upstream, proxy) = setup_with(&profile("")).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!(
            "http://{HOST}/api/v2/public/get_shops_by_partner?page_size=100&page_no=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert!(shopee_is_public(r.path()));
    assert_signed(&r);
    assert_common_params(&r);
    assert!(r.query_param("access_token").is_none());
    assert!(r.query_param("shop_id").is_none());
    let base = format!(
        "{PARTNER_ID}/api/v2/public/get_shops_by_partner{}",
        r.query_param("timestamp").unwrap()
    );
    assert_eq!(
        r.query_param("sign").unwrap(),
        shopee_sign_hex(PARTNER_KEY, &base)
    );
}

async fn refused(proxy: &ProxyHarness, ca: &TestCa, url: &str) -> String {
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "bad_request");
    let body = response_json(resp).await;
    assert_eq!(body["error"]["code"], "bad_request");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_shop_api_without_shop_id_is_refused_and_nothing_reaches_upstream() {
    let (ca, upstream, proxy) = setup_with(&profile("")).await;
    let message = refused(
        &proxy,
        &ca,
        &format!("http://{HOST}/api/v2/shop/get_shop_info?access_token=client-token"),
    )
    .await;
    assert!(message.contains("shop_id"), "{message}");
    let message = refused(
        &proxy,
        &ca,
        &format!("http://{HOST}/api/v2/shop/get_shop_info?shop_id=5"),
    )
    .await;
    assert!(message.contains("access_token"), "{message}");
    assert!(upstream.requests().is_empty(), "nothing was sent upstream");
    assert_eq!(upstream.connections_accepted(), 0);
}

#[tokio::test]
async fn another_shops_id_with_the_profiles_token_is_refused_naming_the_profile_header() {
    let (ca, upstream, proxy) = setup_with(&shop_profile()).await;
    let message = refused(
        &proxy,
        &ca,
        &format!("http://{HOST}/api/v2/shop/get_shop_info?shop_id=999"),
    )
    .await;
    assert!(
        message.contains("999") && message.contains("x-signproxy-profile"),
        "{message}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn merchant_profile_over_connect_signs_the_merchant_base() {
    let (_ca, upstream, proxy) = setup_with(&profile(&format!(
        "merchant_id = 1000000\naccess_token = \"{STATIC_TOKEN}\"\n"
    )))
    .await;
    let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
    let resp = client
        .get(format!(
            "https://{HOST}/api/v2/global_product/get_category?language=zh-hans"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_signed(&r);
    assert_common_params(&r);
    assert_eq!(r.query_params("merchant_id"), vec!["1000000".to_owned()]);
    assert!(r.query_param("shop_id").is_none());
    let base = format!(
        "{PARTNER_ID}/api/v2/global_product/get_category{}{STATIC_TOKEN}1000000",
        r.query_param("timestamp").unwrap()
    );
    assert_eq!(
        r.query_param("sign").unwrap(),
        shopee_sign_hex(PARTNER_KEY, &base)
    );
}

/// Shopee's `error_sign` reaches the client unchanged and is counted as a signature rejection.
#[tokio::test]
async fn an_error_sign_answer_passes_through_and_is_counted() {
    let (ca, upstream, proxy) = setup_with(&shop_profile()).await;
    let answer = r#"{"request_id":"e1","error":"error_sign","message":"Wrong sign."}"#;
    upstream.set_behaviour(Behaviour::json(403, answer));
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}/api/v2/shop/get_shop_info"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("x-signproxy-error").is_none());
    assert_eq!(resp.text().await.unwrap(), answer);
    assert_eq!(
        proxy.metric(
            "signproxy_signature_rejections_total{profile=\"shopee.default\",code=\"error_sign\"}"
        ),
        1.0
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "a rejected signature is not retried"
    );
}

// ---------------------------------------------------------------------------------------------
// Managed tokens
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Endpoint {
    /// Grants: the connection is closed without an answer (the answer is lost on the way).
    lose_answers: bool,
    /// Grants: the answer rotates the refresh token but carries no access token.
    half_answers: bool,
    /// API calls with one of these tokens get Shopee's invalid-token answer.
    rejected: Vec<String>,
    /// Every grant request's JSON body, in order.
    bodies: Vec<serde_json::Value>,
    grants: usize,
}

struct World {
    ca: TestCa,
    upstream: TestUpstream,
    endpoint: Arc<Mutex<Endpoint>>,
}

impl World {
    fn new() -> World {
        let ca = TestCa::new();
        let upstream = TestUpstream::start(&ca, verifier());
        let endpoint = Arc::new(Mutex::new(Endpoint::default()));
        let e = endpoint.clone();
        upstream.set_handler(move |r: &Received| {
            let mut ep = e.lock().unwrap();
            if r.path() == REFRESH_PATH {
                ep.bodies.push(serde_json::from_slice(&r.body).unwrap_or_default());
                if ep.lose_answers {
                    return Some(Behaviour::hang_up());
                }
                if !r.signature.ok {
                    return Some(Behaviour::json(
                        403,
                        r#"{"request_id":"t","error":"error_sign","message":"Wrong sign."}"#,
                    ));
                }
                ep.grants += 1;
                let n = ep.grants;
                if ep.half_answers {
                    let body = serde_json::json!({
                        "request_id": format!("t{n}"), "error": "", "message": "",
                        "refresh_token": format!("rt-{n}"), "expire_in": 14400,
                    });
                    return Some(Behaviour::json(200, &body.to_string()));
                }
                let body = serde_json::json!({
                    "request_id": format!("t{n}"), "error": "", "message": "",
                    "access_token": format!("at-{n}"), "refresh_token": format!("rt-{n}"),
                    "expire_in": 14400, "partner_id": PARTNER_ID, "shop_id": SHOP_ID,
                });
                return Some(Behaviour::json(200, &body.to_string()));
            }
            let token = r.query_param("access_token").unwrap_or_default();
            if ep.rejected.contains(&token) {
                return Some(Behaviour::json(
                    403,
                    r#"{"request_id":"a","error":"invalid_acceess_token","message":"Invalid access token."}"#,
                ));
            }
            None
        });
        World {
            ca,
            upstream,
            endpoint,
        }
    }

    fn config(state: &std::path::Path) -> String {
        test_config(
            "",
            "",
            &profile(&format!("shop_id = {SHOP_ID}\nrefresh_token = \"rt-0\"\n")),
        )
        .replace("@STATE@", &state.to_string_lossy())
    }

    async fn proxy(&self, state: &std::path::Path) -> ProxyHarness {
        ProxyHarness::start(&World::config(state), &self.ca, Some(&self.upstream)).await
    }

    fn refresh_tokens_seen(&self) -> Vec<String> {
        self.endpoint
            .lock()
            .unwrap()
            .bodies
            .iter()
            .map(|b| b["refresh_token"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn api_requests(&self) -> Vec<Received> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|r| r.path() != REFRESH_PATH)
            .collect()
    }

    fn reject(&self, token: &str) {
        self.endpoint
            .lock()
            .unwrap()
            .rejected
            .push(token.to_owned());
    }
}

async fn shop_info(proxy: &ProxyHarness, ca: &TestCa) -> (u16, String) {
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}/api/v2/shop/get_shop_info"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The store's `seed` for a Shopee profile, computed here from its definition: the first 12
/// bytes of SHA-256 over `shopee`, the partner id, `shop_id=S` and the configured refresh token,
/// NUL-separated, in hex.
fn shopee_seed(refresh_token: &str) -> String {
    let input = format!("shopee\0{PARTNER_ID}\0shop_id={SHOP_ID}\0{refresh_token}");
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, input.as_bytes()).as_ref()[..12])
}

fn stored(state: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(state.join("tokens.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["profiles"]["shopee.default"].clone()
}

#[tokio::test]
async fn refresh_is_public_signed_rotates_and_retries_once_on_invalid_acceess_token() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let proxy = world.proxy(state.path()).await;
    let (status, body) = shop_info(&proxy, &world.ca).await;
    assert_eq!(status, 200, "{body}");

    // The refresh request: public-signed (checked by the upstream's verifier), partner_id in the
    // query and in the JSON body, ids as integers.
    let grant = world
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.path() == REFRESH_PATH)
        .unwrap();
    assert_signed(&grant);
    assert_eq!(grant.method, "POST");
    assert_eq!(
        grant.query_params("partner_id"),
        vec![PARTNER_ID.to_string()]
    );
    assert!(grant.query_param("access_token").is_none());
    assert_eq!(grant.header_str("content-type"), Some("application/json"));
    assert_eq!(
        world.endpoint.lock().unwrap().bodies[0],
        serde_json::json!({"refresh_token": "rt-0", "partner_id": PARTNER_ID, "shop_id": SHOP_ID})
    );
    let api = world.api_requests();
    assert_eq!(api.len(), 1);
    assert_signed(&api[0]);
    assert_eq!(api[0].query_params("access_token"), vec!["at-1".to_owned()]);
    assert_eq!(api[0].query_params("shop_id"), vec![SHOP_ID.to_string()]);

    // Shopee says the token is dead: one refresh with the rotated refresh token, then the call
    // again, signed afresh with the new token.
    world.reject("at-1");
    let (status, body) = shop_info(&proxy, &world.ca).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.refresh_tokens_seen(), vec!["rt-0", "rt-1"]);
    let api = world.api_requests();
    assert_eq!(api.len(), 3, "the rejected call and its one retry");
    assert_eq!(api[1].query_param("access_token").as_deref(), Some("at-1"));
    assert_eq!(api[2].query_param("access_token").as_deref(), Some("at-2"));
    assert_signed(&api[2]);
    let stored = stored(state.path());
    assert_eq!(stored["refresh_token"], "rt-2", "{stored}");
    assert_eq!(stored["access_token"], "at-2", "{stored}");
}

#[tokio::test]
async fn a_restart_resumes_from_the_persisted_rotated_refresh_token() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let first = world.proxy(state.path()).await;
    assert_eq!(shop_info(&first, &world.ca).await.0, 200);
    first.stop().await;

    let text = std::fs::read_to_string(state.path().join("tokens.json")).unwrap();
    assert!(
        !text.contains("rt-0"),
        "the spent refresh token is gone: {text}"
    );
    let profile = stored(state.path());
    assert_eq!(profile["seed"], shopee_seed("rt-0"), "{profile}");
    assert_eq!(profile["refresh_token"], "rt-1", "{profile}");
    assert_eq!(profile["access_token"], "at-1", "{profile}");
    let expires_at = profile["expires_at"].as_u64().unwrap();
    assert!(
        expires_at.abs_diff(unix_now() + 14400) < 60,
        "expire_in is a duration: {expires_at}"
    );

    let second = world.proxy(state.path()).await;
    assert_eq!(shop_info(&second, &world.ca).await.0, 200);
    assert_eq!(
        world.refresh_tokens_seen(),
        vec!["rt-0"],
        "the stored token is used"
    );
    world.reject("at-1");
    assert_eq!(shop_info(&second, &world.ca).await.0, 200);
    assert_eq!(
        world.refresh_tokens_seen(),
        vec!["rt-0", "rt-1"],
        "the refresh uses the rotated token, not the config's spent one"
    );
}

#[tokio::test]
async fn a_lost_refresh_answer_keeps_the_previous_pair_in_the_store() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let first = world.proxy(state.path()).await;
    assert_eq!(shop_info(&first, &world.ca).await.0, 200);
    let before = stored(state.path());
    assert_eq!(before["refresh_token"], "rt-1");

    // The token dies and the refresh's answer is lost: the proxy cannot know whether Shopee
    // spent rt-1, so it must keep rt-1 (the only token that may still work).
    world.reject("at-1");
    world.endpoint.lock().unwrap().lose_answers = true;
    let client = reqwest_via_proxy(first.addr, &world.ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}/api/v2/shop/get_shop_info"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-signproxy-error"], "token_unavailable");
    let seen = world.refresh_tokens_seen();
    assert!(
        seen.len() >= 2 && seen[1..].iter().all(|t| t == "rt-1"),
        "{seen:?}"
    );
    let after = stored(state.path());
    assert_eq!(after, before, "the previous pair stays in the store");
    first.stop().await;

    // Once answers arrive again, a restarted proxy refreshes with that same rt-1.
    world.endpoint.lock().unwrap().lose_answers = false;
    let second = world.proxy(state.path()).await;
    let (status, body) = shop_info(&second, &world.ca).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        world.refresh_tokens_seen().last().map(String::as_str),
        Some("rt-1")
    );
    assert_eq!(stored(state.path())["refresh_token"], "rt-2");
    assert_eq!(
        world
            .api_requests()
            .last()
            .unwrap()
            .query_param("access_token")
            .as_deref(),
        Some("at-2")
    );
}

/// An answer that rotates the refresh token but grants no usable access token: Shopee may have
/// spent the refresh token sent, so the rotated one must reach the store, and the next refresh
/// (here after a restart) must use it.
#[tokio::test]
async fn a_half_failed_refresh_keeps_the_rotated_refresh_token() {
    let world = World::new();
    let state = tempfile::tempdir().unwrap();
    let first = world.proxy(state.path()).await;
    assert_eq!(shop_info(&first, &world.ca).await.0, 200);
    assert_eq!(stored(state.path())["refresh_token"], "rt-1");

    world.reject("at-1");
    world.endpoint.lock().unwrap().half_answers = true;
    let (status, body) = shop_info(&first, &world.ca).await;
    assert_eq!(status, 503, "{body}");
    let last_grant = world.endpoint.lock().unwrap().grants;
    assert!(last_grant >= 2);
    assert_eq!(
        stored(state.path())["refresh_token"],
        format!("rt-{last_grant}"),
        "the rotated refresh token is on disk"
    );
    first.stop().await;

    world.endpoint.lock().unwrap().half_answers = false;
    let second = world.proxy(state.path()).await;
    let (status, body) = shop_info(&second, &world.ca).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        world.refresh_tokens_seen().last().cloned(),
        Some(format!("rt-{last_grant}")),
        "the next refresh uses the salvaged token"
    );
}

/// The verifier the upstream uses must itself refuse what Shopee refuses, or every test above
/// would pass whatever the proxy signed.
#[test]
fn the_independent_verifier_refuses_each_mistake() {
    use common::verify_shopee::verify_shopee;
    let ts = 1655714431;
    let path = "/api/v2/shop/get_shop_info";
    let right = shopee_sign_hex(
        PARTNER_KEY,
        &format!("{PARTNER_ID}{path}{ts}{STATIC_TOKEN}{SHOP_ID}"),
    );
    let request = |ts: &str, sign: &str, extra: &str| {
        Received::new(
            "GET",
            &format!("{path}?partner_id={PARTNER_ID}&timestamp={ts}&access_token={STATIC_TOKEN}&shop_id={SHOP_ID}{extra}&sign={sign}"),
            &[],
            b"",
        )
    };
    let ok = |r: &Received| verify_shopee(r, PARTNER_ID, PARTNER_KEY);
    assert_eq!(ok(&request(&ts.to_string(), &right, "")), Ok(()));
    // Other params are not signed.
    assert_eq!(
        ok(&request(&ts.to_string(), &right, "&page_size=5")),
        Ok(())
    );
    assert!(ok(&request(&ts.to_string(), &right.to_uppercase(), "")).is_err());
    assert!(ok(&request(&ts.to_string(), &right[1..], "")).is_err());
    assert!(ok(&request(&(ts + 1).to_string(), &right, "")).is_err());
    let ms = format!("{ts}000");
    let ms_sign = shopee_sign_hex(
        PARTNER_KEY,
        &format!("{PARTNER_ID}{path}{ms}{STATIC_TOKEN}{SHOP_ID}"),
    );
    assert!(ok(&request(&ms, &ms_sign, "")).is_err());
    let decoded_key = hex::decode(PARTNER_KEY.trim_start_matches("shpk")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &decoded_key);
    let decoded_sign = hex::encode(
        ring::hmac::sign(
            &key,
            format!("{PARTNER_ID}{path}{ts}{STATIC_TOKEN}{SHOP_ID}").as_bytes(),
        )
        .as_ref(),
    );
    assert!(ok(&request(&ts.to_string(), &decoded_sign, "")).is_err());
    // A Public API with the token in its base.
    let public = Received::new(
        "GET",
        &format!(
            "/api/v2/public/get_shops_by_partner?partner_id={PARTNER_ID}&timestamp={ts}&sign={}",
            shopee_sign_hex(
                PARTNER_KEY,
                &format!("{PARTNER_ID}/api/v2/public/get_shops_by_partner{ts}{STATIC_TOKEN}")
            )
        ),
        &[],
        b"",
    );
    assert!(ok(&public).is_err());
}
