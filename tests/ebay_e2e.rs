//! End to end, eBay: real clients (reqwest, curl, raw sockets) → the real proxy → a TLS test
//! upstream that checks the RFC 9421 signature with its own implementation and records the bytes.
//! Plus the `signproxy sign` binary against eBay's verification-service vector.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine as _;

use common::proxy::{parse_raw_response, raw_exchange, test_config, ProxyHarness};
use common::*;

const API: &str = "api.ebay.com";
const APIZ: &str = "apiz.ebay.com";
/// The profile's JWE: opaque to the signer, sent verbatim as `x-ebay-signature-key`.
const JWE: &str = "test-jwe-value";
/// Shaped like a real eBay token: `^`, `#`, `+` and `=` must survive TOML and the header verbatim.
const TOKEN: &str = "v^1.1#i^1#test+token=";
const WITH_BODY: &str =
    r#"("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority")"#;
const NO_BODY: &str = r#"("x-ebay-signature-key" "@method" "@path" "@authority")"#;

/// The eBay verification-service vector (ebay.md, "Vectors").
const VECTOR_JWE: &str = "eyJ6aXAiOiJERUYiLCJlbmMiOiJBMjU2R0NNIiwidGFnIjoiSXh2dVRMb0FLS0hlS0Zoa3BxQ05CUSIsImFsZyI6IkEyNTZHQ01LVyIsIml2IjoiaFd3YjNoczk2QzEyOTNucCJ9.2o02pR9SoTF4g_5qRXZm6tF4H52TarilIAKxoVUqjd8.3qaF0KJN-rFHHm_P.AMUAe9PPduew09mANIZ-O_68CCuv6EIx096rm9WyLZnYz5N1WFDQ3jP0RBkbaOtQZHImMSPXIHVaB96RWshLuJsUgCKmTAwkPVCZv3zhLxZVxMXtPUuJ-ppVmPIv0NzznWCOU5Kvb9Xux7ZtnlvLXgwOFEix-BaWNomUAazbsrUCbrp514GIea3butbyxXLNi6R9TJUNh8V2uan-optT1MMyS7eMQnVGL5rYBULk.9K5ucUqAu0DqkkhgubsHHw";
const VECTOR_DIGEST_LINE: &str =
    "Content-Digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
const VECTOR_INPUT_LINE: &str = r#"Signature-Input: sig1=("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#;
const VECTOR_SIGNATURE_LINE: &str = "Signature: sig1=:ZMUpAejnqrt6POSx02ltx3cT9YODV2r+Cem/BKOagDSfztKOtCsjP/MxZqmY+FVJ3/8E4BL76T9Fjty8oJnsAw==:";

/// A TOML multi-line literal string: PEM and base64 need no escaping inside `'''`.
fn toml_literal(text: &str) -> String {
    format!("'''\n{text}'''")
}

/// `[ebay.default]` with `private_key` given as a TOML value, the test JWE, and `extra` lines.
fn ebay_profile(private_key_toml: &str, extra: &str) -> String {
    format!("[ebay.default]\nprivate_key = {private_key_toml}\njwe = \"{JWE}\"\n{extra}\n")
}

async fn setup_with(
    key: &EbayTestKey,
    private_key_toml: &str,
    extra: &str,
) -> (TestCa, TestUpstream, ProxyHarness) {
    let ca = TestCa::new();
    let upstream = TestUpstream::start(&ca, Verifier::ebay(key.public.clone()));
    let config = test_config("", "", &ebay_profile(private_key_toml, extra));
    let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
    (ca, upstream, proxy)
}

/// The RFC 9421 Ed25519 test key, from its PEM, with `extra` profile lines.
async fn setup_ed25519(extra: &str) -> (TestCa, TestUpstream, ProxyHarness) {
    let key = EbayTestKey::rfc9421_ed25519();
    setup_with(&key, &toml_literal(&key.private_pem()), extra).await
}

async fn setup() -> (TestCa, TestUpstream, ProxyHarness) {
    setup_ed25519("").await
}

/// The upstream's independent verifier accepted the request, and each signing header arrived
/// exactly once, with the profile's JWE.
fn assert_verified(r: &Received) {
    assert_eq!(r.signature.scheme, "ebay");
    assert!(
        r.signature.ok,
        "upstream rejected the signature: {:?}",
        r.signature.error
    );
    for name in ["signature", "signature-input", "x-ebay-signature-key"] {
        assert_eq!(r.header_all(name).len(), 1, "exactly one `{name}` header");
    }
    assert_eq!(r.header_str("x-ebay-signature-key"), Some(JWE));
}

/// The component list and `created` of `Signature-Input`, asserting its exact shape
/// `sig1=(...);created=N` and that N is the real clock (eBay rejects stale signatures).
fn signature_input(r: &Received) -> (String, u64) {
    let input = r.header_str("signature-input").expect("signature-input");
    let rest = input
        .strip_prefix("sig1=")
        .unwrap_or_else(|| panic!("label sig1: {input}"));
    let (components, created) = rest
        .split_once(";created=")
        .unwrap_or_else(|| panic!("only `created`: {input}"));
    let created: u64 = created
        .parse()
        .unwrap_or_else(|_| panic!("created is Unix seconds and the only parameter: {input}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        created.abs_diff(now) < 60,
        "created {created} is not within 60 s of now {now}"
    );
    (components.to_owned(), created)
}

/// A signed request with a body: exact component list, and a Content-Digest of the body the
/// upstream received, computed here from the bytes.
fn assert_body_signed(r: &Received, expected_body: &[u8]) {
    assert_verified(r);
    assert_eq!(r.body, expected_body);
    assert_eq!(
        r.header_str("content-length"),
        Some(expected_body.len().to_string().as_str())
    );
    assert_eq!(r.header_all("content-digest").len(), 1);
    assert_eq!(
        r.header_str("content-digest"),
        Some(content_digest(expected_body).as_str())
    );
    assert_eq!(signature_input(r).0, WITH_BODY);
}

/// A signed request without a body: no Content-Digest, and it is not among the components.
fn assert_bodiless_signed(r: &Received) {
    assert_verified(r);
    assert!(r.body.is_empty());
    assert!(!r.has_header("content-digest"));
    assert_eq!(signature_input(r).0, NO_BODY);
}

#[tokio::test]
async fn ed25519_get_with_query_is_signed_over_the_path_without_query() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let query = "filter=payoutDate:%5B2024-01-01T00:00:00.000Z..%5D&limit=20&q=a+b?c";
    let resp = client
        .get(format!("http://{API}/sell/finances/v1/payout?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = response_json(resp).await;
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    let r = upstream.last_request();
    assert_bodiless_signed(&r);
    assert_eq!(r.tls_sni.as_deref(), Some(API), "upgraded to TLS for {API}");
    assert_eq!(
        r.header_all("host"),
        vec![API.as_bytes()],
        "no :443 in Host"
    );
    assert_eq!(r.path(), "/sell/finances/v1/payout");
    assert_eq!(r.query(), Some(query), "the query is forwarded as sent");
    assert!(!r.has_header("x-ebay-enforce-signature"));
    assert!(
        !r.has_header("authorization") && !r.has_header("x-ebay-api-iaf-token"),
        "the profile has no token, so none is added"
    );

    // The query is not covered: the same headers still verify without it, while another path
    // does not (so the verifier really checks @path).
    let key = EbayTestKey::rfc9421_ed25519().public;
    let mut without_query = r.clone();
    without_query.path_and_query = r.path().to_owned();
    verify_ebay(&without_query, &key).unwrap();
    let mut other_path = r.clone();
    other_path.path_and_query = format!("/sell/finances/v1/payouts?{query}");
    assert!(verify_ebay(&other_path, &key).is_err());
}

#[tokio::test]
async fn ed25519_post_json_with_odd_whitespace_arrives_byte_for_byte_with_its_digest() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let body = "{ \"reasonForRefund\" :\t\"BUYER_CANCEL\",\n  \"comment\": \"Grüße, 東京 👋\",\"orderLevelRefundAmount\":{\"value\":\"1.50\" ,  \"currency\":\"EUR\"} }\r\n";
    let resp = client
        .post(format!(
            "http://{API}/sell/fulfillment/v1/order/12-34567-89012/issue_refund"
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_eq!(r.method, "POST");
    assert_body_signed(&r, body.as_bytes());
    assert_eq!(r.header_str("content-type"), Some("application/json"));
    assert_eq!(r.header_str("host"), Some(API));

    // One changed body byte must break the digest check: the verifier is not vacuous.
    let mut tampered = r.clone();
    tampered.body[2] = b'R';
    assert!(verify_ebay(&tampered, &EbayTestKey::rfc9421_ed25519().public).is_err());
}

#[tokio::test]
async fn ed25519_put_with_encoded_path_is_signed() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let body =
        r#"{"availability":{"shipToLocationAvailability":{"quantity":7}},"condition":"NEW"}"#;
    // SKUs may hold spaces and slashes: @path is the raw, still-encoded path.
    let path = "/sell/inventory/v1/inventory_item/SKU%2F1%20blue";
    let resp = client
        .put(format!("http://{API}{path}"))
        .header("content-type", "application/json")
        .header("content-language", "en-US")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path_and_query, path);
    assert_body_signed(&r, body.as_bytes());
    assert_eq!(r.header_str("content-language"), Some("en-US"));
}

#[tokio::test]
async fn ed25519_empty_post_has_no_content_digest() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let resp = client
        .post(format!(
            "http://{API}/sell/fulfillment/v1/order/1/shipping_fulfillment"
        ))
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_eq!(r.method, "POST");
    assert_bodiless_signed(&r);
}

#[tokio::test]
async fn ed25519_chunked_request_body_is_dechunked_with_content_length_and_signed() {
    let (_ca, upstream, proxy) = setup().await;
    // Pieces of different sizes, one over 15 bytes so the hex size has a letter digit.
    let pieces: [&str; 4] = [
        "{\"reasonForRefund\": \"ITEM_NOT_AS_DESCRIBED\",",
        " \"comment\": \"Grüße\"",
        ",\n",
        " \"x\":1 }",
    ];
    assert!(
        pieces.iter().any(|p| format!("{:x}", p.len())
            .bytes()
            .any(|b| b.is_ascii_alphabetic())),
        "some chunk size should need a hex letter"
    );
    let mut request = format!(
        "POST http://{API}/sell/fulfillment/v1/order/9/issue_refund HTTP/1.1\r\nHost: {API}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for piece in pieces {
        request.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
    }
    request.push_str("0\r\n\r\n");
    let raw = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let (status, _, _) = parse_raw_response(&raw);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let r = upstream.last_request();
    let expected = pieces.concat();
    assert_body_signed(&r, expected.as_bytes());
    assert!(!r.has_header("transfer-encoding"));
}

/// The fixed RSA key through every form the profile accepts; each must produce a PKCS#1 v1.5
/// signature the independent verifier accepts (it would reject PSS).
#[tokio::test]
async fn rsa_key_from_pem_bare_base64_pss_oid_and_file_signs_a_post() {
    let key = EbayTestKey::rsa_2048();
    assert!(key.is_rsa());
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("ebay-signing-key.pem");
    std::fs::write(&key_file, key.private_pem()).unwrap();
    let bare = key.private_base64();
    let wrapped: Vec<&str> = bare
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let forms: Vec<(&str, String)> = vec![
        ("PKCS#8 PEM", toml_literal(&key.private_pem())),
        // How eBay's Key Management API returns privateKey: one line, no armour.
        ("bare base64", format!("\"{bare}\"")),
        ("bare base64, wrapped", toml_literal(&wrapped.join("\n"))),
        ("PSS-OID PEM", toml_literal(&key.private_pem_rsa_pss_oid())),
        (
            "file",
            format!("{{ file = {:?} }}", key_file.to_string_lossy()),
        ),
    ];
    for (form, private_key) in forms {
        let (ca, upstream, proxy) = setup_with(&key, &private_key, "").await;
        let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
        let body = format!("{{\"form\": \"{form}\"}}");
        let resp = client
            .post(format!(
                "http://{APIZ}/sell/finances/v1/transfer/TR-1?form=x"
            ))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{form}");
        let r = upstream.last_request();
        assert!(r.signature.ok, "{form}: {:?}", r.signature.error);
        assert_body_signed(&r, body.as_bytes());
        let signature = r.header_str("signature").unwrap();
        let b64 = signature
            .strip_prefix("sig1=:")
            .and_then(|s| s.strip_suffix(':'))
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw.len(), 256, "{form}: a 2048-bit RSA signature");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn apiz_and_sandbox_hosts_are_signed_with_their_own_authority() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    for host in [APIZ, "api.sandbox.ebay.com", "apiz.sandbox.ebay.com"] {
        let resp = client
            .get(format!(
                "http://{host}/sell/finances/v1/seller_funds_summary"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        let r = upstream.last_request();
        assert!(r.signature.ok, "{host}: {:?}", r.signature.error);
        assert_bodiless_signed(&r);
        assert_eq!(r.tls_sni.as_deref(), Some(host));
        assert_eq!(r.header_all("host"), vec![host.as_bytes()]);
        assert_eq!(r.path_and_query, "/sell/finances/v1/seller_funds_summary");
    }
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test]
async fn client_sent_signature_headers_are_replaced() {
    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let stale = [
        ("signature", "sig1=:AAAA:"),
        ("signature", "sig2=:BBBB:"),
        ("signature-input", "sig1=(\"@method\");created=1"),
        ("content-digest", "sha-256=:d3Jvbmc=:"),
        ("x-ebay-signature-key", "client-jwe"),
    ];
    let body = r#"{"a": 1}"#;
    let mut req = client
        .post(format!("http://{API}/sell/finances/v1/x"))
        .body(body);
    for (name, value) in stale {
        // reqwest appends, so the duplicate Signature goes out twice.
        req = req.header(name, value);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let r = upstream.last_request();
    assert_body_signed(&r, body.as_bytes());
    for (name, value) in stale {
        assert!(
            !r.header_all(name).contains(&value.as_bytes()),
            "client's {name}: {value} was forwarded"
        );
    }

    // Without a body, a client-sent Content-Digest must go rather than be forwarded unsigned.
    let mut req = client.get(format!("http://{API}/sell/finances/v1/y"));
    for (name, value) in stale {
        req = req.header(name, value);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    assert_bodiless_signed(&upstream.last_request());
}

#[tokio::test]
async fn profile_token_goes_where_each_api_family_expects_it() {
    let (ca, upstream, proxy) = setup_ed25519(&format!("access_token = \"{TOKEN}\"")).await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());

    client
        .get(format!(
            "http://{APIZ}/sell/finances/v1/seller_funds_summary"
        ))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_bodiless_signed(&r);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(r.header_all("authorization"), vec![bearer.as_bytes()]);
    assert!(!r.has_header("x-ebay-api-iaf-token"));

    client
        .get(format!("http://{API}/post-order/v2/return/123"))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_bodiless_signed(&r);
    let iaf = format!("IAF {TOKEN}");
    assert_eq!(r.header_all("authorization"), vec![iaf.as_bytes()]);
    assert!(!r.has_header("x-ebay-api-iaf-token"));

    let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GetAccountRequest xmlns=\"urn:ebay:apis:eBLBaseComponents\"/>";
    client
        .post(format!("http://{API}/ws/api.dll"))
        .header("content-type", "text/xml")
        .header("x-ebay-api-call-name", "GetAccount")
        .header("x-ebay-api-siteid", "3")
        .body(xml)
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_body_signed(&r, xml.as_bytes());
    assert_eq!(r.header_all("x-ebay-api-iaf-token"), vec![TOKEN.as_bytes()]);
    assert!(!r.has_header("authorization"));
    assert_eq!(r.header_str("x-ebay-api-call-name"), Some("GetAccount"));

    // The client's own credential wins, whatever the API family.
    for path in ["/sell/finances/v1/payout", "/ws/api.dll"] {
        client
            .get(format!("http://{API}{path}"))
            .header("authorization", "Bearer client-token")
            .send()
            .await
            .unwrap();
        let r = upstream.last_request();
        assert_bodiless_signed(&r);
        assert_eq!(
            r.header_all("authorization"),
            vec![b"Bearer client-token".as_slice()],
            "{path}"
        );
        assert!(!r.has_header("x-ebay-api-iaf-token"), "{path}");
    }
}

#[tokio::test]
async fn token_endpoint_passes_unsigned_with_the_clients_basic_auth() {
    let (ca, upstream, proxy) = setup_ed25519(&format!(
        "access_token = \"{TOKEN}\"\nenforce_signature = true"
    ))
    .await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    let basic = "Basic Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQ=";
    let form = "grant_type=refresh_token&refresh_token=v%5E1.1%23i%5E1%23r%5E1%23f%5E0%2Bx%2F%3D&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope%2Fsell.finances";
    let resp = client
        .post(format!("http://{API}/identity/v1/oauth2/token"))
        .header("authorization", basic)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = upstream.last_request();
    assert_eq!(r.tls_sni.as_deref(), Some(API), "still forwarded over TLS");
    assert_eq!(r.path_and_query, "/identity/v1/oauth2/token");
    assert_eq!(r.body, form.as_bytes());
    assert_eq!(
        r.header_str("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header_all("authorization"), vec![basic.as_bytes()]);
    for name in [
        "signature",
        "signature-input",
        "x-ebay-signature-key",
        "content-digest",
        "x-ebay-api-iaf-token",
        "x-ebay-enforce-signature",
    ] {
        assert!(!r.has_header(name), "the token call got `{name}`");
    }
}

#[tokio::test]
async fn enforce_signature_is_opt_in() {
    let (ca, upstream, proxy) = setup_ed25519("enforce_signature = true").await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    client
        .get(format!(
            "http://{APIZ}/sell/finances/v1/seller_funds_summary"
        ))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_bodiless_signed(&r);
    assert_eq!(
        r.header_all("x-ebay-enforce-signature"),
        vec![b"true".as_slice()]
    );
    proxy.stop().await;

    let (ca, upstream, proxy) = setup().await;
    let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
    client
        .get(format!(
            "http://{APIZ}/sell/finances/v1/seller_funds_summary"
        ))
        .send()
        .await
        .unwrap();
    let r = upstream.last_request();
    assert_bodiless_signed(&r);
    assert!(!r.has_header("x-ebay-enforce-signature"));
}

#[test]
fn unloadable_private_key_fails_config_naming_the_key_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_pem = EbayTestKey::rsa_2048().private_pem();
    let rsa_lines: Vec<&str> = rsa_pem.lines().collect();
    // A PEM cut short: the first base64 lines of a real key, whose text must not leak.
    let truncated = format!("{}\n-----END PRIVATE KEY-----\n", rsa_lines[..6].join("\n"));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "\"garbage-not-a-key-SECRETISH-4711\"".to_owned(),
            vec!["garbage-not-a-key", "SECRETISH-4711"],
        ),
        // Valid base64, but "garbage-secret-bytes" rather than PKCS#8.
        (
            "\"Z2FyYmFnZS1zZWNyZXQtYnl0ZXM=\"".to_owned(),
            vec!["Z2FyYmFnZS1zZWNyZXQtYnl0ZXM", "garbage-secret-bytes"],
        ),
        (
            toml_literal("-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZS1zZWNyZXQtYnl0ZXM=\n-----END PRIVATE KEY-----\n"),
            vec!["Z2FyYmFnZS1zZWNyZXQtYnl0ZXM", "garbage-secret-bytes"],
        ),
        (toml_literal(&truncated), rsa_lines[1..6].to_vec()),
    ];
    for (private_key, secret_parts) in cases {
        let text = format!(
            "[proxy]\nstate_dir = {:?}\n\n{}",
            dir.path().to_string_lossy(),
            ebay_profile(&private_key, "")
        );
        let err = signproxy::config::Config::from_toml_str(&text, dir.path())
            .expect_err(&format!("{private_key} must not load"))
            .to_string();
        assert!(err.contains("ebay.default.private_key"), "{err}");
        for part in secret_parts {
            assert!(
                !err.contains(part),
                "the error echoes key text {part:?}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn curl_post_json_through_http_proxy_is_signed() {
    if !require_curl("curl_post_json_through_http_proxy_is_signed") {
        return;
    }
    let (_ca, upstream, proxy) = setup().await;
    let body = "{\"reasonForRefund\":  \"BUYER_CANCEL\" ,\"ü\":1}";
    let out = curl_via_proxy(
        proxy.addr,
        &proxy.upstream_ca_path,
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &format!("http://{API}/sell/fulfillment/v1/order/1/issue_refund?x=1"),
        ],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert_eq!(out.json()["signature"]["ok"], true, "{}", out.body_str());
    let r = upstream.last_request();
    assert_body_signed(&r, body.as_bytes());
    assert_eq!(r.header_str("host"), Some(API));
}

/// Runs `signproxy sign` for eBay's verification-service vector; returns stdout.
fn run_sign_vector(explain: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = EbayTestKey::rfc9421_ed25519();
    let config = format!(
        "[proxy]\nstate_dir = {:?}\n\n[ebay.default]\nprivate_key = {}\njwe = \"{VECTOR_JWE}\"\nhosts = [\"localhost\"]\n",
        dir.path().join("state").to_string_lossy(),
        toml_literal(&key.private_pem()),
    );
    let config_path = dir.path().join("signproxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signproxy"));
    cmd.arg("sign").arg("--config").arg(&config_path).args([
        "--now",
        "1658440308",
        "-d",
        r#"{"hello": "world"}"#,
    ]);
    if explain {
        cmd.arg("--explain");
    }
    cmd.args(["POST", "http://localhost:8080/verifysignature"]);
    let out = cmd.output().expect("run signproxy");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    assert!(
        out.status.success(),
        "signproxy sign failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `sign` prints header names lower-case (HTTP names are case-insensitive): the spec's line with
/// its name lower-cased.
fn as_printed(spec_line: &str) -> String {
    let (name, value) = spec_line.split_once(": ").unwrap();
    format!("{}: {value}", name.to_ascii_lowercase())
}

#[test]
fn sign_cli_reproduces_ebay_verification_service_vector() {
    let stdout = run_sign_vector(false);
    let lines: Vec<&str> = stdout.lines().collect();
    for spec_line in [VECTOR_DIGEST_LINE, VECTOR_INPUT_LINE, VECTOR_SIGNATURE_LINE] {
        let expected = as_printed(spec_line);
        assert!(
            lines.contains(&expected.as_str()),
            "missing line {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        lines.first().copied(),
        Some("POST https://localhost:8080/verifysignature HTTP/1.1")
    );
    assert!(lines.contains(&"host: localhost:8080"), "{stdout}");

    let explained = run_sign_vector(true);
    let (head, explanation) = explained
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line after the head:\n{explained}"));
    // The head is what would be sent, so the JWE is there; the explanation is for bug reports.
    assert!(head.contains(VECTOR_JWE), "{head}");
    assert!(
        head.lines().any(|l| l == as_printed(VECTOR_SIGNATURE_LINE)),
        "--explain changes nothing in the head:\n{head}"
    );
    assert!(!explanation.is_empty());
    assert!(
        !explanation.contains(&VECTOR_JWE[..40]),
        "the explanation shows the JWE:\n{explanation}"
    );
    assert!(
        explanation.contains("\"x-ebay-signature-key\": <jwe from profile>"),
        "{explanation}"
    );
    assert!(
        explanation.contains("\"@authority\": localhost:8080"),
        "{explanation}"
    );
}

// ---------------------------------------------------------------------------------------------
// `signproxy ebay create-key`, against a test Key Management API (and token endpoint) over TLS.

const KEY_PATH: &str = "/developer/key_management/v1/signing_key";
const CLIENT_ID: &str = "App-PRD-create-key";
const CLIENT_SECRET: &str = "PRD-cert-secret-31337";
const APP_TOKEN: &str = "v^1.1#i^1#app-token-for-keys=";
const CREATED_JWE: &str = "eyJ6aXAiOiJERUYifQ.created-jwe.for-tests";
/// eBay's expirationTime for a key created now: three years ahead.
fn created_expires() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 94_608_000
}

/// A test Key Management API: the token endpoint grants [`APP_TOKEN`]; `POST signing_key`
/// answers a key of the cipher asked for (or `refusal`, when given).
fn key_management(upstream: &TestUpstream, refusal: Option<Behaviour>) -> u64 {
    let made = std::sync::atomic::AtomicUsize::new(0);
    let expires = created_expires();
    upstream.set_handler(move |r: &Received| {
        if r.path() == "/identity/v1/oauth2/token" {
            return Some(Behaviour::json(
                200,
                &format!(
                    r#"{{"access_token":"{APP_TOKEN}","expires_in":7200,"token_type":"Application Access Token"}}"#
                ),
            ));
        }
        if r.path() != KEY_PATH {
            return None;
        }
        if let Some(refusal) = &refusal {
            return Some(refusal.clone());
        }
        let asked: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        let key = match asked["signingKeyCipher"].as_str() {
            Some("RSA") => EbayTestKey::rsa_2048(),
            _ => EbayTestKey::rfc9421_ed25519(),
        };
        let n = made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let answer = serde_json::json!({
            "creationTime": expires - 94_608_000,
            "expirationTime": expires,
            "jwe": CREATED_JWE,
            "privateKey": key.private_base64(),
            "publicKey": "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=",
            "signingKeyCipher": asked["signingKeyCipher"],
            "signingKeyId": format!("kid-created-{n}"),
        });
        Some(Behaviour::json(201, &answer.to_string()))
    });
    expires
}

struct KeyWorld {
    ca: TestCa,
    upstream: TestUpstream,
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    config_path: std::path::PathBuf,
    ca_path: std::path::PathBuf,
    /// The expirationTime the test API states.
    expires: u64,
}

impl KeyWorld {
    /// A keyless `[ebay.default]` with an OAuth client, eBay hosts dialled at the test upstream.
    fn start(refusal: Option<Behaviour>) -> KeyWorld {
        let ca = TestCa::new();
        let upstream =
            TestUpstream::start(&ca, Verifier::ebay(EbayTestKey::rfc9421_ed25519().public));
        let expires = key_management(&upstream, refusal);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ca_path = ca.write_ca_pem(dir.path());
        let config_path = dir.path().join("signproxy.toml");
        let world = KeyWorld {
            ca,
            upstream,
            state,
            config_path,
            ca_path: ca_path.clone(),
            expires,
            _dir: dir,
        };
        world.write_config(
            &format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"),
            &ca_path,
        );
        world
    }

    fn write_config(&self, profile_lines: &str, ca_path: &std::path::Path) {
        let text = format!(
            "[proxy]\nstate_dir = {:?}\n\n{}\n[ebay.default]\n{profile_lines}",
            self.state.to_string_lossy(),
            self.upstream.upstream_toml_section(ca_path),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    fn ca_path(&self) -> std::path::PathBuf {
        self.ca_path.clone()
    }

    /// `signproxy ARGS --config CONFIG`: (success, stdout, stderr). Async, so the test
    /// upstream on this runtime keeps answering.
    async fn signproxy(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("SIGNPROXY_CONFIG")
            .env_remove("SIGNPROXY_STATE_DIR")
            .output()
            .await
            .expect("run signproxy");
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn key_requests(&self) -> Vec<Received> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|r| r.path() == KEY_PATH)
            .collect()
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The README's create-key command, as written (without its comment), and its example lines.
fn readme_create_key() -> (Vec<String>, String) {
    let readme = common::readme::readme();
    let command = common::readme::fenced_blocks(&readme, "sh")
        .into_iter()
        .find_map(|b| {
            b.lines()
                .find(|l| l.starts_with("signproxy ebay create-key"))
                .map(str::to_owned)
        })
        .expect("the README's create-key command");
    let command = command.split('#').next().unwrap();
    let words = command
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    let lines = common::readme::fenced_blocks(&readme, "toml")
        .into_iter()
        .find(|b| b.contains("key_expires_at = ") && !b.contains("[ebay.default]"))
        .expect("the README's create-key output");
    (words, lines)
}

#[tokio::test]
async fn create_key_writes_private_files_prints_the_profile_lines_and_no_secret() {
    let world = KeyWorld::start(None);
    let (words, readme_lines) = readme_create_key();
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = world.signproxy(&args).await;
    assert!(ok, "create-key failed:\n{stdout}\n{stderr}");

    // What reached eBay: a client-credentials grant for the app, then the key request with it.
    let requests = world.upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let grant = &requests[0];
    assert_eq!(grant.path(), "/identity/v1/oauth2/token");
    assert_eq!(grant.tls_sni.as_deref(), Some(API));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_eq!(
        grant.header_str("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(&grant.body).into_owned().collect();
    assert!(
        form.contains(&("grant_type".into(), "client_credentials".into())),
        "{form:?}"
    );
    assert!(
        form.contains(&(
            "scope".into(),
            "https://api.ebay.com/oauth/api_scope".into()
        )),
        "{form:?}"
    );
    let create = &requests[1];
    assert_eq!((create.method.as_str(), create.path()), ("POST", KEY_PATH));
    assert_eq!(create.tls_sni.as_deref(), Some(APIZ));
    assert_eq!(
        create.header_str("authorization"),
        Some(format!("Bearer {APP_TOKEN}").as_str())
    );
    assert_eq!(create.body, br#"{"signingKeyCipher":"ED25519"}"#);

    // The files: private (0600), the key as PEM of exactly the DER eBay returned, the JWE as is.
    let key_path = world
        .state
        .join("ebay.default.signing-key.kid-created-1.pem");
    let jwe_path = world
        .state
        .join("ebay.default.signing-key.kid-created-1.jwe");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&jwe_path), 0o600);
    let key = EbayTestKey::rfc9421_ed25519();
    let pem = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(
        common::keys::pem_decode(&pem).unwrap(),
        key.private_pkcs8_der
    );
    assert_eq!(std::fs::read_to_string(&jwe_path).unwrap(), CREATED_JWE);

    // The output names the files and the expiry, and holds no secret.
    let lines = printed_profile_lines(&stdout);
    assert_eq!(
        lines,
        format!(
            "private_key = {{ file = {:?} }}\njwe = {{ file = {:?} }}\nkey_expires_at = {}\n",
            key_path.to_string_lossy(),
            jwe_path.to_string_lossy(),
            world.expires,
        ),
        "{stdout}"
    );
    // The README shows the same lines, for its own state folder.
    let shown: Vec<&str> = readme_lines
        .lines()
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    let printed: Vec<&str> = lines
        .lines()
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert_eq!(shown, printed, "README:\n{readme_lines}");
    assert!(
        readme_lines.contains("ebay.default.signing-key."),
        "{readme_lines}"
    );
    assert!(
        stdout.contains("kid-created-1") && stdout.contains("(ed25519)"),
        "{stdout}"
    );
    let body_line = pem.lines().nth(1).unwrap();
    for secret in [
        key.private_base64().as_str(),
        body_line,
        CLIENT_SECRET,
        APP_TOKEN,
        CREATED_JWE,
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret:?} printed:\n{stdout}\n{stderr}"
        );
    }

    // The printed lines work: the profile loads, `check` passes without an expiry warning, and
    // the proxy signs with the new key (verified by the upstream's own verifier).
    world.write_config(
        &format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n{lines}"),
        &world.ca_path(),
    );
    let (ok, check_out, check_err) = world.signproxy(&["check"]).await;
    assert!(ok, "{check_out}\n{check_err}");
    assert!(!check_err.contains("expires"), "{check_err}");
    world.upstream.clear_requests();
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    let proxy = ProxyHarness::start(&config, &world.ca, Some(&world.upstream)).await;
    let client = reqwest_via_proxy(proxy.addr, &world.ca.ca_pem());
    let resp = client
        .get(format!(
            "http://{APIZ}/sell/finances/v1/seller_funds_summary"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let signed = world
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.path() == "/sell/finances/v1/seller_funds_summary")
        .expect("the signed request arrived");
    verify_ebay(&signed, &key.public).unwrap();
    assert_eq!(signed.header_str("x-ebay-signature-key"), Some(CREATED_JWE));
    proxy.stop().await;
}

#[tokio::test]
async fn create_key_asks_for_force_before_a_second_key_and_never_overwrites_the_first() {
    let world = KeyWorld::start(None);
    let (ok, _, stderr) = world
        .signproxy(&["ebay", "create-key", "--profile", "ebay.default"])
        .await;
    assert!(ok, "{stderr}");
    let first_key = world
        .state
        .join("ebay.default.signing-key.kid-created-1.pem");
    let first_jwe = world
        .state
        .join("ebay.default.signing-key.kid-created-1.jwe");
    let first = std::fs::read(&first_key).unwrap();

    // Again without --force: refused before eBay is asked (a key made and not kept is lost).
    let (ok, stdout, stderr) = world
        .signproxy(&["ebay", "create-key", "--profile", "default"])
        .await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("--force") && stderr.contains("kid-created-1.pem"),
        "{stderr}"
    );
    assert_eq!(world.key_requests().len(), 1, "no second key was asked for");

    // With --force and --cipher rsa: a new RSA key in files of its own, 0600; the first pair
    // stays as it was, so the config can go back to it.
    let (ok, stdout, stderr) = world
        .signproxy(&[
            "ebay",
            "create-key",
            "--profile",
            "default",
            "--cipher",
            "rsa",
            "--force",
        ])
        .await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(rsa-v1_5-sha256)"), "{stdout}");
    assert_eq!(
        world.key_requests().last().unwrap().body,
        br#"{"signingKeyCipher":"RSA"}"#
    );
    let second_key = world
        .state
        .join("ebay.default.signing-key.kid-created-2.pem");
    let pem = std::fs::read_to_string(&second_key).unwrap();
    assert_eq!(
        common::keys::pem_decode(&pem).unwrap(),
        EbayTestKey::rsa_2048().private_pkcs8_der
    );
    assert_eq!(mode(&second_key), 0o600);
    assert!(
        printed_profile_lines(&stdout).contains("kid-created-2.jwe"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&first_key).unwrap(), first);
    assert_eq!(std::fs::read_to_string(&first_jwe).unwrap(), CREATED_JWE);
    let leftovers: Vec<_> = std::fs::read_dir(&world.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn create_key_reports_ebays_refusal_and_writes_nothing() {
    let refusal = Behaviour::json(
        403,
        r#"{"errors":[{"errorId":1100,"domain":"ACCESS","category":"REQUEST","message":"Access denied","longMessage":"Insufficient permissions to fulfill the request."}]}"#,
    );
    let world = KeyWorld::start(Some(refusal));
    let (ok, stdout, stderr) = world
        .signproxy(&["ebay", "create-key", "--profile", "default"])
        .await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("HTTP 403") && stderr.contains("1100 Access denied"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(APP_TOKEN) && !stderr.contains(CLIENT_SECRET),
        "{stderr}"
    );
    let written: Vec<_> = std::fs::read_dir(&world.state)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        written
            .iter()
            .all(|n| !n.to_string_lossy().contains("signing-key")),
        "{written:?}"
    );

    // A profile that does not exist, or has no OAuth client, is named before anything is sent.
    world.upstream.clear_requests();
    let (ok, _, stderr) = world
        .signproxy(&["ebay", "create-key", "--profile", "other"])
        .await;
    assert!(
        !ok && stderr.contains("no [ebay.other] profile"),
        "{stderr}"
    );
    world.write_config("", &world.ca_path());
    let (ok, _, stderr) = world
        .signproxy(&["ebay", "create-key", "--profile", "default"])
        .await;
    assert!(
        !ok && stderr.contains("client_id and client_secret"),
        "{stderr}"
    );
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn a_profile_without_a_key_refuses_requests_with_the_way_out_and_sends_nothing() {
    // A static token, and managed tokens (which must not cost a grant for a refused request).
    for credential in [
        format!("access_token = \"{TOKEN}\"\n"),
        format!("client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"),
    ] {
        let ca = TestCa::new();
        let upstream =
            TestUpstream::start(&ca, Verifier::ebay(EbayTestKey::rfc9421_ed25519().public));
        let config = test_config("", "", &format!("[ebay.default]\n{credential}"));
        let proxy = ProxyHarness::start(&config, &ca, Some(&upstream)).await;
        let client = reqwest_via_proxy(proxy.addr, &ca.ca_pem());
        let resp = client
            .get(format!("http://{API}/sell/finances/v1/payout"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500, "{credential}");
        let body = response_json(resp).await;
        assert_eq!(body["error"]["code"], "signing_failed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("signproxy ebay create-key --profile default"),
            "{message}"
        );
        assert!(!message.contains(TOKEN) && !message.contains(CLIENT_SECRET));
        assert_eq!(
            upstream.connections_accepted(),
            0,
            "nothing reached eBay ({credential})"
        );
        proxy.stop().await;
    }

    // Half a key is a config error that names the missing half.
    for (lines, missing) in [
        ("jwe = \"x\"\n", "private_key"),
        ("private_key = \"x\"\n", "jwe"),
    ] {
        let text = format!("[proxy]\nstate_dir = \"/tmp/unused\"\n[ebay.default]\n{lines}");
        let err = signproxy::config::Config::from_toml_str(&text, std::path::Path::new("/tmp"))
            .expect_err("half a key must not load")
            .to_string();
        assert!(err.contains(&format!("ebay.default.{missing}")), "{err}");
    }
}
