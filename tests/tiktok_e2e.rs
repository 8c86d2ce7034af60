//! End to end, TikTok Shop: real clients (reqwest, curl, raw sockets) → the real proxy → a TLS
//! test upstream that checks the signature with its own implementation and records the bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::proxy::{
    parse_raw_response, raw_exchange, test_config, tiktok_profile, ProxyHarness, TIKTOK_APP_KEY,
    TIKTOK_APP_SECRET,
};
use common::*;

const HOST: &str = "open-api.tiktokglobalshop.com";

fn tiktok_verifier() -> Verifier {
    Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET)
}

async fn setup_with(proxy_extra: &str, profile: &str) -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, tiktok_verifier());
    let config = test_config(proxy_extra, "", profile);
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

async fn setup() -> (TestCa, TestUpstream, ProxyHarness) {
    setup_with("", &tiktok_profile()).await
}

fn assert_signed(r: &Received) {
    assert_eq!(r.signature.scheme, "tiktok");
    assert!(
        r.signature.ok,
        "upstream rejected the signature: {:?}",
        r.signature.error
    );
}

#[tokio::test]
async fn get_is_signed_upgraded_to_tls_and_echoed() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let url = format!("http://{HOST}/authorization/202309/shops");
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(
        r.tls_sni.as_deref(),
        Some(HOST),
        "forwarded over TLS with the host's SNI"
    );
    assert_eq!(r.header_str("host"), Some(HOST));
    assert_eq!(r.path(), "/authorization/202309/shops");
    assert_eq!(r.query_param("app_key").as_deref(), Some(TIKTOK_APP_KEY));
    let ts: u64 = r.query_param("timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ts.abs_diff(now) < 60,
        "timestamp {ts} is seconds, near now {now}"
    );
    assert!(r.body.is_empty());
    assert!(
        !r.has_header("content-length"),
        "a bodiless GET gets no content-length"
    );
}

#[tokio::test]
async fn post_json_with_odd_whitespace_and_non_ascii_arrives_byte_for_byte() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let body = "{ \"order_status\" :\t\"UNPAID\",\n  \"note\": \"Grüße, 東京 👋\",\"n\":1.50 }\r\n";
    let resp = client
        .post(format!(
            "http://{HOST}/order/202309/orders/search?page_size=20"
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(
        r.header_str("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header_str("content-type"), Some("application/json"));
}

#[tokio::test]
async fn percent_encoded_and_plus_values_keep_their_wire_form_and_verify() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let query = "page_token=YWJj%3D%3D&q=red+shoes%20size%2B1&empty=";
    client
        .get(format!("http://{HOST}/product/202309/products?{query}"))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_signed(&r);
    assert!(
        r.query().unwrap().starts_with(query),
        "client's encoding must be kept: {}",
        r.path_and_query
    );
    assert_eq!(r.query_param("page_token").as_deref(), Some("YWJj=="));
    assert_eq!(r.query_param("q").as_deref(), Some("red shoes size+1"));
}

#[tokio::test]
async fn multipart_upload_is_forwarded_intact_and_its_body_not_signed() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZbound\r\nContent-Disposition: form-data; name=\"data\"; filename=\"img.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(&pattern_bytes(0, 70_000));
    body.extend_from_slice(b"\r\n--XyZbound--\r\n");
    let resp = client
        .post(format!("http://{HOST}/product/202309/images/upload"))
        .header("content-type", "multipart/form-data; boundary=XyZbound")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn chunked_request_body_is_dechunked_with_content_length() {
    let (_ca, upstream, proxy) = setup().await;
    let pieces: [&str; 3] = ["{\"a\": ", "1, ", "\"b\":\"ü\" }"];
    let mut request = format!(
        "POST http://{HOST}/event/202309/webhooks HTTP/1.1\r\nHost: {HOST}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for piece in pieces {
        request.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
    }
    request.push_str("0\r\n\r\n");
    let raw = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let (status, _, _) = parse_raw_response(&raw);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let r = upstream.last_request();
    assert_signed(&r);
    let expected = "{\"a\": 1, \"b\":\"ü\" }".as_bytes();
    assert_eq!(r.body, expected);
    assert_eq!(
        r.header_str("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert!(!r.has_header("transfer-encoding"));
}

#[tokio::test]
async fn client_sent_stale_sign_timestamp_and_app_key_are_replaced() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    client
        .get(format!(
            "http://{HOST}/authorization/202309/shops?sign=ABCDEF&timestamp=1600000000000&app_key=other"
        ))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(r.query_params("sign").len(), 1);
    assert_eq!(r.query_params("timestamp").len(), 1);
    assert_eq!(r.query_params("app_key"), vec![TIKTOK_APP_KEY.to_owned()]);
    assert_ne!(r.query_param("timestamp").as_deref(), Some("1600000000000"));
}

#[tokio::test]
async fn profile_token_and_shop_cipher_are_added_only_when_absent() {
    let profile = format!(
        "{}access_token = \"TTP_profile_token\"\nshop_cipher = \"ROW_profile\"\n",
        tiktok_profile()
    );
    let (ca, upstream, proxy) = setup_with("", &profile).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    client
        .get(format!("http://{HOST}/order/202309/orders"))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(
        r.header_str("x-tts-access-token"),
        Some("TTP_profile_token")
    );
    assert_eq!(r.query_param("shop_cipher").as_deref(), Some("ROW_profile"));

    client
        .get(format!(
            "http://{HOST}/authorization/202309/shops?shop_cipher=ROW_own"
        ))
        .header("x-tts-access-token", "TTP_client")
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(r.header_str("x-tts-access-token"), Some("TTP_client"));
    assert_eq!(r.query_params("shop_cipher"), vec!["ROW_own".to_owned()]);
}

#[tokio::test]
async fn duplicate_query_keys_get_a_clear_400_and_nothing_is_sent() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get(format!("http://{HOST}/product/202309/products?ids=1&ids=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "bad_request");
    let body = response_json(resp).await;
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`ids` appears more than once"));
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn body_over_the_limit_is_413_before_anything_is_sent() {
    let (ca, upstream, proxy) = setup_with("max_body_bytes = 1000", &tiktok_profile()).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(format!("http://{HOST}/event/202309/webhooks"))
        .header("content-type", "application/json")
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-signproxy-error"], "body_too_large");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        r#"{"error":{"code":"body_too_large","message":"request body is 1001 bytes; the limit is 1000 ([proxy] max_body_bytes)"}}"#
    );

    // Chunked: no declared length, refused as soon as the limit is crossed.
    let request = format!(
        "POST http://{HOST}/event/202309/webhooks HTTP/1.1\r\nHost: {HOST}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        600,
        "a".repeat(600),
        600,
        "b".repeat(600)
    );
    let raw = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let (status, headers, _) = parse_raw_response(&raw);
    assert_eq!(status, 413);
    assert!(headers.contains(&("x-signproxy-error".into(), "body_too_large".into())));

    // Exactly at the limit is fine.
    let ok = client
        .post(format!("http://{HOST}/event/202309/webhooks"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn unknown_host_is_refused_with_403_for_plain_and_connect() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .get("http://example.com/anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-signproxy-error"], "host_not_allowed");
    let body = response_json(resp).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`example.com`"));

    let raw = raw_exchange(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, body) = parse_raw_response(&raw);
    assert_eq!(status, 403);
    assert!(headers.contains(&("x-signproxy-error".into(), "host_not_allowed".into())));
    assert!(String::from_utf8_lossy(&body).contains("host_not_allowed"));
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn upstream_down_is_502_with_the_cause() {
    let ca = TestCa::new();
    // A port that was free a moment ago: nothing listens there now.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = test_config("", "", &tiktok_profile()).replace(
        "@CONNECT_TO@",
        &format!("{{ \"{HOST}:443\" = \"{dead}\" }}"),
    );
    let proxy = ProxyHarness::start(&config, &ca, None).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers()["x-signproxy-error"],
        "upstream_connect_failed"
    );
    let body = response_json(resp).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&dead.to_string()), "{message}");
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_naming_ca_file() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let upstream = TestUpstream::start(&other_ca, tiktok_verifier());
    let proxy = ProxyHarness::start(
        &test_config("", "", &tiktok_profile()),
        &ca,
        Some(&upstream),
    )
    .await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = response_json(resp).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ca_file"),
        "{body}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, tiktok_verifier());
    upstream.set_behaviour(Behaviour::delayed(Duration::from_secs(5)));
    let config = test_config("", "", &tiktok_profile())
        .replace("request_timeout_ms = 10000", "request_timeout_ms = 300");
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-signproxy-error"], "upstream_timeout");
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let (ca, upstream, proxy) = setup().await;
    let tiktok_error =
        r#"{"code":106001,"message":"Invalid credentials.","request_id":"x","data":null}"#;
    upstream.set_behaviour(Behaviour::respond(
        401,
        "application/json",
        tiktok_error.as_bytes(),
    ));
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("x-signproxy-error").is_none());
    assert_eq!(resp.text().await.unwrap(), tiktok_error);
}

#[tokio::test]
async fn large_streamed_response_arrives_intact() {
    let (ca, upstream, proxy) = setup().await;
    upstream.set_behaviour(Behaviour::stream(3_000_000, 65_536));
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client.get(format!("http://{HOST}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), 3_000_000);
    assert_eq!(&bytes[..], &pattern_bytes(0, 3_000_000)[..]);
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    for i in 0..5 {
        let resp = client
            .post(format!("http://{HOST}/event/202309/webhooks?i={i}"))
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests.iter().all(|r| r.signature.ok));
    assert_eq!(
        upstream.connections_accepted(),
        1,
        "one TLS connection for five requests"
    );
}

/// A connection comes back to the pool only when its answer has ended and it can take another
/// request: after an empty answer (204, HEAD) and a chunked one it is reused; after the server
/// said `Connection: close`, the next request gets a new one and still succeeds.
#[tokio::test]
async fn pooled_connections_survive_empty_chunked_and_closing_answers() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    upstream.push_behaviour(Behaviour::respond(204, "application/json", b""));
    upstream.push_behaviour(Behaviour::echo());
    upstream.push_behaviour(Behaviour::echo().with_chunked());
    upstream.push_behaviour(Behaviour::echo());
    let url = |i: usize| format!("http://{HOST}/api/products?i={i}");
    let r = client.get(url(0)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = client.head(url(1)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(url(2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 10, "the chunked echo");
    let r = client.get(url(3)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(
        upstream.connections_accepted(),
        1,
        "one connection for an empty, a HEAD, a chunked and a plain answer"
    );

    upstream.push_behaviour(Behaviour::echo().with_close());
    for i in 4..6 {
        let r = client.get(url(i)).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
    }
    assert_eq!(upstream.requests().len(), 6);
    assert_eq!(
        upstream.connections_accepted(),
        2,
        "a new connection after the server closed its own"
    );
}

#[tokio::test]
async fn passthrough_host_is_forwarded_unchanged_over_plain_http() {
    let ca = TestCa::new();
    let plain = TestUpstream::start_plain(Verifier::None);
    // An address is reached through the network that holds it, never through a host pattern.
    let config = test_config(
        &format!(
            "allow_networks = [\"127.0.0.1/32\"]\npassthrough_ports = [{}]",
            plain.port()
        ),
        "",
        &tiktok_profile(),
    );
    let proxy = ProxyHarness::start(&config, &ca, None).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(plain.url("/bucket/key?sign=client-owned&x=%2B"))
        .header("x-custom", "kept")
        .body("raw body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = plain.last_request();
    assert_eq!(r.path_and_query, "/bucket/key?sign=client-owned&x=%2B");
    assert_eq!(r.body, b"raw body");
    assert_eq!(r.header_str("x-custom"), Some("kept"));
    assert!(r.tls_sni.is_none());
}

#[tokio::test]
async fn origin_form_request_to_the_proxy_port_is_explained() {
    let (_ca, _upstream, proxy) = setup().await;
    let raw = raw_exchange(
        proxy.addr,
        b"GET /authorization/202309/shops HTTP/1.1\r\nHost: localhost\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, body) = parse_raw_response(&raw);
    assert_eq!(status, 400);
    assert!(headers.contains(&("x-signproxy-error".into(), "bad_request".into())));
    assert!(String::from_utf8_lossy(&body).contains("HTTP_PROXY"));
}

#[tokio::test]
async fn profile_header_selects_and_is_removed() {
    let profiles = format!(
        "{}\n[tiktok.us]\napp_key = \"us_key\"\napp_secret = \"us-secret\"\n",
        tiktok_profile()
    );
    let (ca, upstream, proxy) = setup_with("", &profiles).await;
    upstream.set_verifier(Verifier::tiktok("us_key", "us-secret"));
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    client
        .get(format!("http://{HOST}/x"))
        .header("x-signproxy-profile", "us")
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_signed(&r);
    assert!(!r.has_header("x-signproxy-profile"));

    let resp = client
        .get(format!("http://{HOST}/x"))
        .header("x-signproxy-profile", "eu")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-signproxy-error"], "unknown_profile");
}

#[tokio::test]
async fn curl_get_and_post_through_http_proxy() {
    if !require_curl("curl_get_and_post_through_http_proxy") {
        return;
    }
    let (_ca, upstream, proxy) = setup().await;
    let out = curl_via_proxy(
        proxy.addr,
        &proxy.upstream_ca_path,
        &[&format!(
            "http://{HOST}/authorization/202309/shops?page_token=a%3D%3D"
        )],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert_signed(&upstream.last_request());

    let body = "{\"order_status\":  \"UNPAID\" ,\"ü\":1}";
    let out = curl_via_proxy(
        proxy.addr,
        &proxy.upstream_ca_path,
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &format!("http://{HOST}/order/202309/orders/search"),
        ],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    let r = upstream.last_request();
    assert_signed(&r);
    assert_eq!(r.body, body.as_bytes());
}

/// `https://host?page_size=20` has an empty path; HTTP/1.1 sends `/`, so that is what is signed
/// (the upstream's own verifier checks it).
#[tokio::test]
async fn an_empty_path_with_a_query_is_signed_over_slash() {
    let (_ca, upstream, proxy) = setup().await;
    let raw = raw_exchange(
        proxy.addr,
        format!(
            "GET http://{HOST}?page_size=20 HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    let (status, _, body) = parse_raw_response(&raw);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r = upstream.last_request();
    assert_eq!(r.path(), "/");
    assert_eq!(r.query_param("page_size").as_deref(), Some("20"));
    assert_signed(&r);
}

/// A percent-escape that does not decode to UTF-8 is refused, naming the parameter, and nothing
/// is sent: TikTok's handling of it is undocumented.
#[tokio::test]
async fn a_query_that_is_not_utf8_is_refused_before_anything_is_sent() {
    let (_ca, upstream, proxy) = setup().await;
    let raw = raw_exchange(
        proxy.addr,
        format!(
            "GET http://{HOST}/api/x?a=%C3 HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    let (status, headers, body) = parse_raw_response(&raw);
    assert_eq!(status, 400);
    assert!(headers.contains(&("x-signproxy-error".into(), "bad_request".into())));
    assert!(String::from_utf8_lossy(&body).contains("`a`"));
    assert!(upstream.requests().is_empty());
}

/// `[upstream] max_in_flight`: past the limit, requests wait for an upstream answer to finish
/// instead of opening more connections.
#[tokio::test]
async fn upstream_requests_past_max_in_flight_wait_their_turn() {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, tiktok_verifier());
    // One worker: the harness's thread uses a set of its own, sized max_in_flight / workers.
    let config = test_config("workers = 1", "max_in_flight = 1", &tiktok_profile());
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    let (open, held) = gate();
    upstream.set_behaviour(Behaviour::echo().held_until(held));
    let mut pending = Vec::new();
    for i in 0..3 {
        let client = reqwest_via_proxy(proxy.addr, &proxy.proxy_ca_pem());
        pending.push(tokio::spawn(async move {
            client
                .get(format!("http://{HOST}/queued/{i}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    upstream.wait_for_requests(1, Duration::from_secs(20)).await;
    // The other two wait at the proxy: the upstream sees one request, on one connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests().len(), 1);
    open.send(true).unwrap();
    for answer in pending {
        assert_eq!(answer.await.unwrap().unwrap(), 200);
    }
    assert_eq!(upstream.requests().len(), 3);
    assert!(upstream.requests().iter().all(|r| r.signature.ok));
}
