//! Self-tests of the test harness (tests/common): the verifiers against the official vectors, and
//! the test upstream called directly (no proxy) with reqwest and curl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::keys::{der_read, pem_decode, RFC9421_ED25519_PUBLIC_PEM};
use common::verify::{ebay_signature_base, tiktok_sign_hex, tiktok_string_to_sign};
use common::*;

const TT_HOST: &str = "open-api.tiktokglobalshop.com";
const TT_VECTOR_SIGN: &str = "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";
const TT_VECTOR_PQ: &str = "/authorization/202309/shops?app_key=29a39d&timestamp=1623812664&sign=b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";

const EBAY_JWE: &str = "eyJ6aXAiOiJERUYiLCJlbmMiOiJBMjU2R0NNIiwidGFnIjoiSXh2dVRMb0FLS0hlS0Zoa3BxQ05CUSIsImFsZyI6IkEyNTZHQ01LVyIsIml2IjoiaFd3YjNoczk2QzEyOTNucCJ9.2o02pR9SoTF4g_5qRXZm6tF4H52TarilIAKxoVUqjd8.3qaF0KJN-rFHHm_P.AMUAe9PPduew09mANIZ-O_68CCuv6EIx096rm9WyLZnYz5N1WFDQ3jP0RBkbaOtQZHImMSPXIHVaB96RWshLuJsUgCKmTAwkPVCZv3zhLxZVxMXtPUuJ-ppVmPIv0NzznWCOU5Kvb9Xux7ZtnlvLXgwOFEix-BaWNomUAazbsrUCbrp514GIea3butbyxXLNi6R9TJUNh8V2uan-optT1MMyS7eMQnVGL5rYBULk.9K5ucUqAu0DqkkhgubsHHw";
const EBAY_VECTOR_DIGEST: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
const EBAY_VECTOR_INPUT: &str = r#"sig1=("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#;
const EBAY_VECTOR_SIG: &str = "sig1=:ZMUpAejnqrt6POSx02ltx3cT9YODV2r+Cem/BKOagDSfztKOtCsjP/MxZqmY+FVJ3/8E4BL76T9Fjty8oJnsAw==:";
const HELLO_BODY: &[u8] = br#"{"hello": "world"}"#;

// ------------------------------------------------------------------------------------------------
// Tiny local signers (a third implementation, only for driving the verifiers)
// ------------------------------------------------------------------------------------------------

/// Path + query with app_key, timestamp and sign added (params given pre-encoded).
fn tiktok_sign_local(
    path: &str,
    encoded_params: &[(&str, &str)],
    body: &[u8],
    app_key: &str,
    secret: &str,
    timestamp: u64,
) -> String {
    let ts = timestamp.to_string();
    let mut params: Vec<(&str, &str)> = encoded_params.to_vec();
    params.push(("app_key", app_key));
    params.push(("timestamp", &ts));
    let mut decoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            let one = format!("{k}={v}");
            form_urlencoded::parse(one.as_bytes())
                .into_owned()
                .next()
                .unwrap()
        })
        .filter(|(k, _)| k != "access_token")
        .collect();
    decoded.sort();
    let mut s = secret.to_string().into_bytes();
    s.extend_from_slice(path.as_bytes());
    for (k, v) in &decoded {
        s.extend_from_slice(k.as_bytes());
        s.extend_from_slice(v.as_bytes());
    }
    s.extend_from_slice(body);
    s.extend_from_slice(secret.as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sign = hex::encode(ring::hmac::sign(&key, &s));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}&sign={sign}", query.join("&"))
}

/// The eBay headers for a request (header name, value).
fn ebay_sign_local(
    key: &EbayTestKey,
    method: &str,
    authority: &str,
    path: &str,
    body: &[u8],
    created: u64,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    let mut lines = Vec::new();
    let comps = if body.is_empty() {
        r#""x-ebay-signature-key" "@method" "@path" "@authority""#
    } else {
        let digest = format!(
            "sha-256=:{}:",
            B64.encode(ring::digest::digest(&ring::digest::SHA256, body))
        );
        lines.push(format!("\"content-digest\": {digest}"));
        headers.push(("content-digest".to_string(), digest));
        r#""content-digest" "x-ebay-signature-key" "@method" "@path" "@authority""#
    };
    let params = format!("({comps});created={created}");
    lines.push(format!("\"x-ebay-signature-key\": {EBAY_JWE}"));
    lines.push(format!("\"@method\": {method}"));
    lines.push(format!("\"@path\": {path}"));
    lines.push(format!("\"@authority\": {authority}"));
    lines.push(format!("\"@signature-params\": {params}"));
    let sig = key.sign(lines.join("\n").as_bytes());
    headers.push(("x-ebay-signature-key".to_string(), EBAY_JWE.to_string()));
    headers.push(("signature-input".to_string(), format!("sig1={params}")));
    headers.push((
        "signature".to_string(),
        format!("sig1=:{}:", B64.encode(sig)),
    ));
    headers
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn received_with(method: &str, pq: &str, headers: &[(String, String)], body: &[u8]) -> Received {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    Received::new(method, pq, &h, body)
}

fn tt_client(ca: &TestCa, up: &TestUpstream) -> reqwest::Client {
    reqwest_direct(&ca.ca_pem(), &[(TT_HOST, up.addr())])
}

// ------------------------------------------------------------------------------------------------
// TikTok verifier
// ------------------------------------------------------------------------------------------------

#[test]
fn tiktok_official_vector_verifies() {
    let r = Received::new("GET", TT_VECTOR_PQ, &[], b"");
    verify_tiktok(&r, "29a39d", "e59af819cc").unwrap();
    let sts = tiktok_string_to_sign(r.path(), &r.query_pairs(), &r.body, None);
    assert_eq!(
        sts,
        b"/authorization/202309/shopsapp_key29a39dtimestamp1623812664".to_vec()
    );
    assert_eq!(tiktok_sign_hex("e59af819cc", &sts), TT_VECTOR_SIGN);
    // The content type of a GET does not matter.
    let r = Received::new(
        "GET",
        TT_VECTOR_PQ,
        &[("Content-Type", "application/json")],
        b"",
    );
    verify_tiktok(&r, "29a39d", "e59af819cc").unwrap();
}

#[test]
fn tiktok_official_vector_negatives() {
    // One byte of the sign flipped.
    let flipped = TT_VECTOR_PQ.replace("sign=b596", "sign=b597");
    let err = verify_tiktok(
        &Received::new("GET", &flipped, &[], b""),
        "29a39d",
        "e59af819cc",
    )
    .unwrap_err();
    assert!(err.contains("sign mismatch"), "{err}");

    // Uppercase hex.
    let upper = TT_VECTOR_PQ.replace(TT_VECTOR_SIGN, &TT_VECTOR_SIGN.to_uppercase());
    let err = verify_tiktok(
        &Received::new("GET", &upper, &[], b""),
        "29a39d",
        "e59af819cc",
    )
    .unwrap_err();
    assert!(err.contains("uppercase"), "{err}");

    // A body that was not signed.
    let r = Received::new(
        "POST",
        TT_VECTOR_PQ,
        &[("content-type", "application/json")],
        b"{}",
    );
    let err = verify_tiktok(&r, "29a39d", "e59af819cc").unwrap_err();
    assert!(err.contains("sign mismatch"), "{err}");

    // Wrong secret, wrong app key.
    let r = Received::new("GET", TT_VECTOR_PQ, &[], b"");
    assert!(verify_tiktok(&r, "29a39d", "e59af819cd").is_err());
    let err = verify_tiktok(&r, "29a39e", "e59af819cc").unwrap_err();
    assert!(err.contains("app_key"), "{err}");

    // Timestamp in milliseconds, missing sign, duplicated sign.
    let ms = TT_VECTOR_PQ.replace("timestamp=1623812664", "timestamp=1623812664000");
    let err =
        verify_tiktok(&Received::new("GET", &ms, &[], b""), "29a39d", "e59af819cc").unwrap_err();
    assert!(err.contains("timestamp"), "{err}");
    let unsigned = "/authorization/202309/shops?app_key=29a39d&timestamp=1623812664";
    let err = verify_tiktok(
        &Received::new("GET", unsigned, &[], b""),
        "29a39d",
        "e59af819cc",
    )
    .unwrap_err();
    assert!(err.contains("`sign` is missing"), "{err}");
    let twice = format!("{TT_VECTOR_PQ}&sign={TT_VECTOR_SIGN}");
    let err = verify_tiktok(
        &Received::new("GET", &twice, &[], b""),
        "29a39d",
        "e59af819cc",
    )
    .unwrap_err();
    assert!(err.contains("appears 2 times"), "{err}");
}

#[test]
fn tiktok_body_example_string_to_sign() {
    let r = Received::new(
        "POST",
        "/event/202309/webhooks?app_key=68xu9ks5p4i8&shop_cipher=ROW_xkMbgAAAeVAQra0eZWebFQq5aIK&timestamp=1696909648",
        &[("content-type", "application/json")],
        br#"{"address":"https://partner.tiktokshop.com","event_type":"PACKAGE_UPDATE"}"#,
    );
    let sts = tiktok_string_to_sign(
        r.path(),
        &r.query_pairs(),
        &r.body,
        r.header("content-type"),
    );
    assert_eq!(
        String::from_utf8(sts).unwrap(),
        r#"/event/202309/webhooksapp_key68xu9ks5p4i8shop_cipherROW_xkMbgAAAeVAQra0eZWebFQq5aIKtimestamp1696909648{"address":"https://partner.tiktokshop.com","event_type":"PACKAGE_UPDATE"}"#
    );
}

#[test]
fn tiktok_verifier_rules() {
    let (key, secret, ts) = ("appkey1", "s3cr3t", 1_700_000_000);
    let check = |pq: &str, ct: &str, body: &[u8]| {
        let headers: Vec<(&str, &str)> = if ct.is_empty() {
            vec![]
        } else {
            vec![("content-type", ct)]
        };
        verify_tiktok(&Received::new("POST", pq, &headers, body), key, secret)
    };

    // Decoded values: the same sign whether the value was sent percent-encoded or not, and `+`
    // is a space.
    let pq = tiktok_sign_local("/p", &[("page_token", "ab%3D%3D")], b"", key, secret, ts);
    check(&pq, "", b"").unwrap();
    let pq_plain = tiktok_sign_local("/p", &[("page_token", "ab==")], b"", key, secret, ts);
    assert_eq!(
        pq.rsplit_once("sign=").unwrap().1,
        pq_plain.rsplit_once("sign=").unwrap().1
    );
    let plus = tiktok_sign_local("/p", &[("q", "a+b")], b"", key, secret, ts);
    let space = tiktok_sign_local("/p", &[("q", "a%20b")], b"", key, secret, ts);
    assert_eq!(
        plus.rsplit_once("sign=").unwrap().1,
        space.rsplit_once("sign=").unwrap().1
    );
    check(&plus, "", b"").unwrap();

    // access_token in the query is not signed; empty values are kept.
    let pq = tiktok_sign_local(
        "/p",
        &[
            ("access_token", "TTP_x"),
            ("empty", ""),
            ("B", "1"),
            ("a", "2"),
        ],
        b"",
        key,
        secret,
        ts,
    );
    check(&pq, "", b"").unwrap();

    // The body is signed, byte for byte.
    let body = br#"{"a": 1,  "b":[2]}"#;
    let pq = tiktok_sign_local("/p", &[], body, key, secret, ts);
    check(&pq, "application/json", body).unwrap();
    let err = check(&pq, "application/json", br#"{"a":1,"b":[2]}"#).unwrap_err();
    assert!(err.contains("body 15 bytes"), "{err}");

    // Multipart (any case, with parameters) is not signed: a signature over no body verifies
    // whatever multipart body is sent; the same body as JSON fails.
    let pq = tiktok_sign_local("/upload", &[], b"", key, secret, ts);
    check(
        &pq,
        "Multipart/Form-Data; boundary=xyz",
        b"--xyz\r\nstuff\r\n--xyz--\r\n",
    )
    .unwrap();
    check(&pq, "multipart/form-data", b"anything").unwrap();
    assert!(check(&pq, "application/json", b"anything").is_err());
    assert!(check(&pq, "multipart/mixed; boundary=x", b"anything").is_err());

    // The path is signed.
    let pq = tiktok_sign_local("/a", &[], b"", key, secret, ts);
    assert!(check(&pq.replacen("/a", "/b", 1), "", b"").is_err());
}

// ------------------------------------------------------------------------------------------------
// eBay verifier
// ------------------------------------------------------------------------------------------------

fn ebay_vector_headers(host: &str) -> Vec<(String, String)> {
    [
        ("Host", host),
        ("x-ebay-signature-key", EBAY_JWE),
        ("Content-Digest", EBAY_VECTOR_DIGEST),
        ("Signature-Input", EBAY_VECTOR_INPUT),
        ("Signature", EBAY_VECTOR_SIG),
        ("Content-Type", "application/json"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

fn rfc_public() -> EbayPublicKey {
    EbayPublicKey::from_spki_pem(RFC9421_ED25519_PUBLIC_PEM).unwrap()
}

#[test]
fn rfc9530_content_digest_vector() {
    assert_eq!(HELLO_BODY.len(), 18);
    assert_eq!(content_digest(HELLO_BODY), EBAY_VECTOR_DIGEST);
}

#[test]
fn ebay_verification_service_vector_verifies() {
    let public = rfc_public();
    assert_eq!(EbayTestKey::rfc9421_ed25519().public, public);
    let r = received_with(
        "POST",
        "/verifysignature",
        &ebay_vector_headers("localhost:8080"),
        HELLO_BODY,
    );
    verify_ebay(&r, &public).unwrap();
    let base = ebay_signature_base(
        &r,
        r#""content-digest" "x-ebay-signature-key" "@method" "@path" "@authority""#,
        r#"("content-digest" "x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#,
    )
    .unwrap();
    let base = String::from_utf8(base).unwrap();
    assert!(base.starts_with(&format!("\"content-digest\": {EBAY_VECTOR_DIGEST}\n")));
    assert!(base.contains("\n\"@authority\": localhost:8080\n\"@signature-params\": ("));
    assert!(!base.ends_with('\n'));
    // Our local signer reproduces the vector's signature (Ed25519 is deterministic).
    let local = ebay_sign_local(
        &EbayTestKey::rfc9421_ed25519(),
        "POST",
        "localhost:8080",
        "/verifysignature",
        HELLO_BODY,
        1658440308,
    );
    assert!(local.contains(&("signature".to_string(), EBAY_VECTOR_SIG.to_string())));
    // The query is not part of @path.
    let r = received_with(
        "POST",
        "/verifysignature?x=1",
        &ebay_vector_headers("localhost:8080"),
        HELLO_BODY,
    );
    verify_ebay(&r, &public).unwrap();
}

#[test]
fn ebay_verification_service_vector_negatives() {
    let public = rfc_public();
    let headers = ebay_vector_headers("localhost:8080");

    // Tampered body: the digest no longer matches.
    let r = received_with(
        "POST",
        "/verifysignature",
        &headers,
        br#"{"hello": "World"}"#,
    );
    let err = verify_ebay(&r, &public).unwrap_err();
    assert!(err.contains("content-digest mismatch"), "{err}");

    // Tampered body with a matching digest: the signature fails.
    let tampered = br#"{"hello": "World"}"#;
    let mut h = headers.clone();
    h[2].1 = content_digest(tampered);
    let err = verify_ebay(
        &received_with("POST", "/verifysignature", &h, tampered),
        &public,
    )
    .unwrap_err();
    assert!(err.contains("does not verify"), "{err}");

    // Another authority (default port dropped is a different string), method, path.
    let r = received_with(
        "POST",
        "/verifysignature",
        &ebay_vector_headers("localhost"),
        HELLO_BODY,
    );
    assert!(verify_ebay(&r, &public).is_err());
    let r = received_with("PUT", "/verifysignature", &headers, HELLO_BODY);
    assert!(verify_ebay(&r, &public).is_err());
    let r = received_with("POST", "/verifysignature/", &headers, HELLO_BODY);
    assert!(verify_ebay(&r, &public).is_err());

    // Another key.
    let other = EbayTestKey::generate_ed25519().public;
    let r = received_with("POST", "/verifysignature", &headers, HELLO_BODY);
    assert!(verify_ebay(&r, &other).is_err());

    // Extra signature parameters, other labels, wrong component lists, missing headers.
    let with = |name: &str, value: Option<&str>| {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        if let Some(v) = value {
            h.push((name.to_string(), v.to_string()));
        }
        verify_ebay(
            &received_with("POST", "/verifysignature", &h, HELLO_BODY),
            &public,
        )
    };
    let err = with(
        "signature-input",
        Some(&format!("{EBAY_VECTOR_INPUT};alg=\"ed25519\"")),
    )
    .unwrap_err();
    assert!(err.contains("exactly `;created=N`"), "{err}");
    assert!(with(
        "signature-input",
        Some(&EBAY_VECTOR_INPUT.replace("sig1=", "sig2="))
    )
    .is_err());
    let err = with(
        "signature-input",
        Some(r#"sig1=("x-ebay-signature-key" "@method" "@path" "@authority");created=1658440308"#),
    )
    .unwrap_err();
    assert!(err.contains("expected"), "{err}");
    let err = with("x-ebay-signature-key", None).unwrap_err();
    assert!(err.contains("x-ebay-signature-key"), "{err}");
    let err = with("content-digest", None).unwrap_err();
    assert!(err.contains("content-digest is missing"), "{err}");
    assert!(with("signature", None).is_err());
    assert!(with(
        "signature",
        Some(&EBAY_VECTOR_SIG.replace("sig1=:", "sig1="))
    )
    .is_err());
}

#[test]
fn ebay_local_signer_no_body_and_rsa() {
    for key in [EbayTestKey::generate_ed25519(), EbayTestKey::rsa_2048()] {
        // No body: no content-digest in the component list.
        let mut h = ebay_sign_local(&key, "GET", "api.ebay.com", "/sell/x", b"", 1_700_000_000);
        h.push(("host".into(), "api.ebay.com".into()));
        let r = received_with("GET", "/sell/x?limit=1", &h, b"");
        verify_ebay(&r, &key.public).unwrap();
        // The same headers with a body: the component list is wrong.
        let r = received_with("GET", "/sell/x", &h, b"x");
        let err = verify_ebay(&r, &key.public).unwrap_err();
        assert!(err.contains("covered components"), "{err}");

        // With a body.
        let body = br#"{"reason":"BUYER_CANCEL","amount":{"value":"1.00"}}"#;
        let mut h = ebay_sign_local(
            &key,
            "POST",
            "apiz.ebay.com",
            "/sell/y",
            body,
            1_700_000_001,
        );
        h.push(("host".into(), "apiz.ebay.com".into()));
        verify_ebay(&received_with("POST", "/sell/y", &h, body), &key.public).unwrap();
    }
}

#[test]
fn test_keys_round_trip() {
    let rsa = EbayTestKey::rsa_2048();
    assert!(rsa.is_rsa());
    // PEM and bare base64 forms decode to the same DER.
    assert_eq!(
        pem_decode(&rsa.private_pem()).unwrap(),
        rsa.private_pkcs8_der
    );
    assert_eq!(
        pem_decode(&rsa.private_base64()).unwrap(),
        rsa.private_pkcs8_der
    );
    // The PSS-OID form carries the same inner PKCS#1 key under id-RSASSA-PSS.
    let inner = |der: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let (_, outer, _) = der_read(der).unwrap();
        let (_, _, rest) = der_read(outer).unwrap();
        let (_, alg, rest) = der_read(rest).unwrap();
        let (_, oid, _) = der_read(alg).unwrap();
        let (_, key, _) = der_read(rest).unwrap();
        (oid.to_vec(), key.to_vec())
    };
    let pss = pem_decode(&rsa.private_pem_rsa_pss_oid()).unwrap();
    let (oid_a, key_a) = inner(&rsa.private_pkcs8_der);
    let (oid_b, key_b) = inner(&pss);
    assert_eq!(key_a, key_b);
    assert_eq!(hex::encode(oid_a), "2a864886f70d010101");
    assert_eq!(hex::encode(oid_b), "2a864886f70d01010a");
    // A generated Ed25519 key is PKCS#8 v1 like the RFC key, and usable.
    let ed = EbayTestKey::generate_ed25519();
    assert_eq!(ed.private_pkcs8_der.len(), 48);
    let again = EbayTestKey::from_pkcs8_der(pem_decode(&ed.private_pem()).unwrap()).unwrap();
    assert_eq!(again.public, ed.public);
}

// ------------------------------------------------------------------------------------------------
// The test upstream, called directly
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_echoes_request_byte_for_byte() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = tt_client(&ca, &up);
    let body: Vec<u8> = (0u8..=255)
        .chain(b"{\"k\": \"v\"}".iter().copied())
        .collect();
    let pq = "/x/y%2Fz?b=%20two&a=1+2&empty=&flag";
    let resp = client
        .post(format!("https://{TT_HOST}{pq}"))
        .header("x-custom", "Value With  Spaces")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let echo: serde_json::Value = response_json(resp).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/x/y%2Fz");
    assert_eq!(echo["query"], "b=%20two&a=1+2&empty=&flag");
    assert_eq!(echo["headers"]["x-custom"], "Value With  Spaces");
    assert_eq!(echo["headers"]["host"], TT_HOST);
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(
        B64.decode(echo["body_b64"].as_str().unwrap()).unwrap(),
        body
    );
    assert_eq!(echo["signature"]["scheme"], "none");
    assert_eq!(echo["signature"]["ok"], true);
    assert!(echo["signature"]["error"].is_null());
    assert_eq!(echo["sni"], TT_HOST);

    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path_and_query, pq);
    assert_eq!(r.body, body);
    assert_eq!(r.tls_sni.as_deref(), Some(TT_HOST));
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.header_str("X-Custom"), Some("Value With  Spaces"));
    assert_eq!(r.host_name().as_deref(), Some(TT_HOST));
    assert_eq!(r.query_param("a").as_deref(), Some("1 2"));
    assert_eq!(r.query_param("b").as_deref(), Some(" two"));
    assert_eq!(r.query_param("flag").as_deref(), Some(""));
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| *n == n.to_ascii_lowercase()));
    let custom = names.iter().position(|n| *n == "x-custom").unwrap();
    let ct = names.iter().position(|n| *n == "content-type").unwrap();
    assert!(custom < ct, "headers keep their order: {names:?}");
    assert!(up.handshake_errors().is_empty());
}

#[tokio::test]
async fn upstream_serves_every_name_with_sni() {
    let ca = TestCa::new();
    let up = TestUpstream::start_with(
        &ca,
        UpstreamOptions {
            extra_names: vec!["extra.example.test".into()],
            ..UpstreamOptions::new(Verifier::None)
        },
    );
    let mut names: Vec<&str> = UPSTREAM_NAMES.to_vec();
    names.push("extra.example.test");
    let resolve: Vec<(&str, SocketAddr)> = names.iter().map(|n| (*n, up.addr())).collect();
    let client = reqwest_direct(&ca.ca_pem(), &resolve);
    for name in &names {
        let resp = client
            .get(format!("https://{name}/ping"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
    }
    // By IP (certificate has IP SAN 127.0.0.1; no SNI is sent for an IP).
    let resp = client
        .get(format!("https://127.0.0.1:{}/ip", up.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let snis: Vec<Option<String>> = up.requests().into_iter().map(|r| r.tls_sni).collect();
    let mut expected: Vec<Option<String>> = names.iter().map(|n| Some(n.to_string())).collect();
    expected.push(None);
    assert_eq!(snis, expected);
    assert_eq!(up.connect_to_entries().len(), names.len());
    assert!(up.connect_to_toml().contains(&format!(
        "\"api.ebay.com:443\" = \"127.0.0.1:{}\"",
        up.port()
    )));
    let section = up.upstream_toml_section(std::path::Path::new("/tmp/ca.pem"));
    assert!(section.starts_with("[upstream]\nca_file = \"/tmp/ca.pem\"\nconnect_to = { "));
}

#[tokio::test]
async fn upstream_rejects_untrusted_client() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = reqwest_direct(&other.ca_pem(), &[(TT_HOST, up.addr())]);
    let err = client
        .get(format!("https://{TT_HOST}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert!(up.requests().is_empty());
    // The server side notices the failed handshake shortly after: how shortly depends on the
    // machine's load, so wait for it (up to a generous deadline) rather than a fixed second.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.handshake_errors().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.handshake_errors().len(), 1);
    assert_eq!(up.connections_accepted(), 1);
}

#[tokio::test]
async fn upstream_tiktok_verifier() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::tiktok("k1", "sec"));
    let client = tt_client(&ca, &up);
    let body = br#"{"order_status":"UNPAID"}"#;
    let pq = tiktok_sign_local(
        "/order/202309/orders/search",
        &[("page_size", "20"), ("shop_cipher", "ROW_abc")],
        body,
        "k1",
        "sec",
        now_secs(),
    );
    let echo: serde_json::Value = response_json(
        client
            .post(format!("https://{TT_HOST}{pq}"))
            .header("content-type", "application/json")
            .header("x-tts-access-token", "TTP_token")
            .body(body.to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["signature"]["scheme"], "tiktok");
    assert_eq!(echo["signature"]["ok"], true, "{echo}");
    assert!(echo["signature"]["error"].is_null());

    // Unsigned.
    let echo: serde_json::Value = response_json(
        client
            .post(format!(
                "https://{TT_HOST}/order/202309/orders/search?page_size=20"
            ))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["signature"]["ok"], false);
    assert!(
        echo["signature"]["error"]
            .as_str()
            .unwrap()
            .contains("app_key"),
        "{echo}"
    );

    // Signed, but the body differs from what was signed.
    let echo: serde_json::Value = response_json(
        client
            .post(format!("https://{TT_HOST}{pq}"))
            .header("content-type", "application/json")
            .body(br#"{"order_status": "UNPAID"}"#.to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["signature"]["ok"], false);

    let verdicts: Vec<bool> = up.requests().iter().map(|r| r.signature.ok).collect();
    assert_eq!(verdicts, [true, false, false]);
}

#[tokio::test]
async fn upstream_ebay_verifier() {
    let ca = TestCa::new();
    let key = EbayTestKey::generate_ed25519();
    let up = TestUpstream::start(&ca, Verifier::ebay(key.public.clone()));
    let client = reqwest_direct(&ca.ca_pem(), &[("apiz.ebay.com", up.addr())]);
    let body = br#"{"hello": "world"}"#;
    let path = "/sell/finances/v1/transaction";
    let mut req = client
        .post(format!("https://apiz.ebay.com{path}?limit=5"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (n, v) in ebay_sign_local(&key, "POST", "apiz.ebay.com", path, body, now_secs()) {
        req = req.header(n, v);
    }
    let echo: serde_json::Value = response_json(req.send().await.unwrap()).await;
    assert_eq!(echo["signature"]["scheme"], "ebay");
    assert_eq!(echo["signature"]["ok"], true, "{echo}");

    // Unsigned.
    let echo: serde_json::Value = response_json(
        client
            .get(format!("https://apiz.ebay.com{path}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["signature"]["ok"], false);
    assert!(echo["signature"]["error"]
        .as_str()
        .unwrap()
        .contains("x-ebay-signature-key"));
}

#[tokio::test]
async fn upstream_by_host_verifier() {
    let ca = TestCa::new();
    let key = EbayTestKey::generate_ed25519();
    let up = TestUpstream::start(
        &ca,
        Verifier::ByHost(vec![
            (TT_HOST.into(), Verifier::tiktok("k", "s")),
            ("api.ebay.com".into(), Verifier::ebay(key.public.clone())),
        ]),
    );
    let client = reqwest_direct(
        &ca.ca_pem(),
        &[
            (TT_HOST, up.addr()),
            ("api.ebay.com", up.addr()),
            ("localhost", up.addr()),
        ],
    );
    for url in [
        format!("https://{TT_HOST}/a"),
        "https://api.ebay.com/a".to_string(),
        "https://localhost/a".to_string(),
    ] {
        client.get(url).send().await.unwrap();
    }
    let v: Vec<(&str, bool)> = up
        .requests()
        .iter()
        .map(|r| (r.signature.scheme, r.signature.ok))
        .collect();
    assert_eq!(v, [("tiktok", false), ("ebay", false), ("none", true)]);
}

#[tokio::test]
async fn upstream_keep_alive_connection_counting() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = tt_client(&ca, &up);
    for i in 0..3 {
        let resp = client
            .post(format!("https://{TT_HOST}/n/{i}"))
            .body(vec![b'x'; 10_000])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(up.connections_accepted(), 1);
    assert!(up.requests().iter().all(|r| r.connection == 1));

    // A second client opens a second connection.
    let other = tt_client(&ca, &up);
    other
        .get(format!("https://{TT_HOST}/other"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(up.connections_accepted(), 2);
    assert_eq!(up.last_request().connection, 2);

    // `connection: close` forces the next request onto a new connection.
    up.push_behaviour(Behaviour::echo().with_close());
    for _ in 0..2 {
        client
            .get(format!("https://{TT_HOST}/close"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(up.connections_accepted(), 3);
    let conns: Vec<usize> = up.requests().iter().map(|r| r.connection).collect();
    assert_eq!(conns, [1, 1, 1, 2, 1, 3]);
}

#[tokio::test]
async fn upstream_status_body_queue_and_handler() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = tt_client(&ca, &up);
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let resp = client
                .get(format!("https://{TT_HOST}{path}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            let x = resp
                .headers()
                .get("x-test")
                .map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = response_json(resp).await;
            (status, ct, x, body)
        }
    };

    up.push_behaviour(Behaviour::tiktok_error(200, 105002, "access token expired"));
    up.push_behaviour(Behaviour::ebay_error(401, 1001, "Invalid access token"));
    up.push_behaviour(
        Behaviour::echo()
            .with_status(201)
            .with_header("x-test", "yes"),
    );
    let (s, ct, _, b) = get("/one").await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert_eq!(b["code"], 105002);
    let (s, _, _, b) = get("/two").await;
    assert_eq!(s, 401);
    assert_eq!(b["errors"][0]["errorId"], 1001);
    let (s, _, x, b) = get("/three").await;
    assert_eq!((s, x.as_deref()), (201, Some("yes")));
    assert_eq!(b["path"], "/three");
    let (s, _, _, b) = get("/four").await;
    assert_eq!(s, 200);
    assert_eq!(b["path"], "/four");

    // A handler decides per request and wins over the queue.
    up.push_behaviour(Behaviour::json(500, "{}"));
    up.set_handler(|r| (r.path() == "/teapot").then(|| Behaviour::json(418, r#"{"tea":1}"#)));
    let (s, _, _, b) = get("/teapot").await;
    assert_eq!((s, b["tea"].as_i64()), (418, Some(1)));
    let (s, _, _, _) = get("/queued").await;
    assert_eq!(s, 500);
    up.clear_handler();
    up.set_behaviour(Behaviour::respond(202, "application/json", b"[1,2]"));
    let (s, _, _, b) = get("/default").await;
    assert_eq!((s, b), (202, serde_json::json!([1, 2])));
    assert_eq!(up.requests().len(), 7);
}

#[tokio::test]
async fn upstream_delay_lets_clients_time_out() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    // Held, not delayed: no answer can beat the client's timeout, however slow the machine.
    let (_never_opened, held) = gate();
    up.set_behaviour(Behaviour::echo().held_until(held));
    let client = reqwest_builder(&ca.ca_pem())
        .no_proxy()
        .resolve(TT_HOST, up.addr())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        client
            .post(format!("https://{TT_HOST}/slow"))
            .body("abc")
            .send(),
    )
    .await
    .expect("the client's own timeout ends the request")
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The request was recorded before the answer was held.
    let reqs = up.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(reqs[0].body, b"abc");
}

#[tokio::test]
async fn upstream_held_answer_waits_for_its_gate() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let (open, held) = gate();
    up.push_behaviour(Behaviour::echo().held_until(held));
    let client = tt_client(&ca, &up);
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(format!("https://{TT_HOST}/held"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    up.wait_for_requests(1, Duration::from_secs(20)).await;
    // Another request on another connection is answered while the first is held.
    let other = tt_client(&ca, &up)
        .get(format!("https://{TT_HOST}/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!pending.is_finished(), "held until the gate opens");
    open.send(true).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("answered once the gate opens")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_streams_large_bodies() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = tt_client(&ca, &up);
    let total = 5 * 1024 * 1024 + 7;
    up.push_behaviour(Behaviour::stream(total, 64 * 1024));
    let mut spec = Behaviour::stream(300_000, 100_000);
    if let Some(s) = spec.stream.as_mut() {
        s.content_length = true;
        s.chunk_delay = Some(Duration::from_millis(10));
    }
    up.push_behaviour(spec);

    let resp = client
        .get(format!("https://{TT_HOST}/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(
        resp.headers()["transfer-encoding"].to_str().unwrap(),
        "chunked"
    );
    let mut resp = resp;
    let mut got = Vec::new();
    let mut frames = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
        frames += 1;
    }
    assert!(frames > 1);
    assert_eq!(got.len(), total);
    assert!(got == pattern_bytes(0, total));

    let resp = client
        .get(format!("https://{TT_HOST}/big2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"].to_str().unwrap(), "300000");
    assert!(resp.bytes().await.unwrap() == pattern_bytes(0, 300_000));
}

#[tokio::test]
async fn upstream_hang_up_and_shutdown() {
    let ca = TestCa::new();
    let up = TestUpstream::start(&ca, Verifier::None);
    let client = tt_client(&ca, &up);
    up.push_behaviour(Behaviour::hang_up());
    let err = client
        .get(format!("https://{TT_HOST}/gone"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    assert_eq!(up.requests().len(), 1);
    client
        .get(format!("https://{TT_HOST}/back"))
        .send()
        .await
        .unwrap();
    assert_eq!(up.connections_accepted(), 2);

    // After shutdown the port refuses connections.
    let addr = up.addr();
    up.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn upstream_h2_when_offered() {
    let ca = TestCa::new();
    let up = TestUpstream::start_with(
        &ca,
        UpstreamOptions {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..UpstreamOptions::new(Verifier::None)
        },
    );
    let client = tt_client(&ca, &up);
    let resp = client
        .post(format!("https://{TT_HOST}/h2?x=1"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = response_json(resp).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(up.last_request().path_and_query, "/h2?x=1");
    assert_eq!(up.last_request().body, b"hi");
}

#[tokio::test]
async fn plain_upstream_and_proxy_style_clients() {
    let ca = TestCa::new();
    let up = TestUpstream::start_plain(Verifier::None);
    assert!(!up.is_tls());
    let client = reqwest_direct(&ca.ca_pem(), &[]);
    let echo: serde_json::Value = response_json(
        client
            .put(up.url("/plain?q=1"))
            .body("data")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/plain");
    assert!(echo["sni"].is_null());
    let r = up.last_request();
    assert_eq!(r.tls_sni, None);
    assert_eq!(r.path_and_query, "/plain?q=1");

    // reqwest_via_proxy sends plain-http requests in absolute form to the proxy address: the
    // plain upstream stands in for a proxy here.
    let via = reqwest_via_proxy(up.addr(), &ca.ca_pem());
    let echo: serde_json::Value = response_json(
        via.get("http://passthrough.example.test/abs?x=%41")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["uri"], "http://passthrough.example.test/abs?x=%41");
    assert_eq!(echo["headers"]["host"], "passthrough.example.test");
    let r = up.last_request();
    assert_eq!(r.path_and_query, "/abs?x=%41");
    assert_eq!(r.uri, "http://passthrough.example.test/abs?x=%41");
}

#[tokio::test]
async fn curl_helpers() {
    if !require_curl("curl_helpers") {
        return;
    }
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca_pem(dir.path());
    let up = TestUpstream::start(&ca, Verifier::None);
    let resolve = format!("{TT_HOST}:{}:127.0.0.1", up.port());
    let ca_arg = ca_path.to_string_lossy().into_owned();
    let url = format!("https://{TT_HOST}:{}/curl?a=b", up.port());
    let out = curl(&[
        "--cacert",
        &ca_arg,
        "--resolve",
        &resolve,
        "-H",
        "x-from: curl",
        "--data-binary",
        "hello",
        &url,
    ])
    .await;
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.status, 200);
    assert_eq!(out.header("content-type"), Some("application/json"));
    let echo = out.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["headers"]["x-from"], "curl");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["headers"]["host"], format!("{TT_HOST}:{}", up.port()));
    assert_eq!(up.last_request().tls_sni.as_deref(), Some(TT_HOST));

    // Untrusted CA: curl fails with a TLS error, no status.
    let other = TestCa::new();
    let other_path = other.write_ca_pem(tempfile::tempdir().unwrap().path());
    let other_arg = other_path.to_string_lossy().into_owned();
    let out = curl(&["--cacert", &other_arg, "--resolve", &resolve, &url]).await;
    assert_ne!(out.exit_code, 0);
    assert_eq!(out.status, 0);

    // curl_via_proxy: a plain upstream stands in for the proxy and sees the absolute form.
    let plain = TestUpstream::start_plain(Verifier::None);
    let out = curl_via_proxy(
        plain.addr(),
        &ca_path,
        &["-X", "DELETE", "http://api.ebay.com/sell/z?x=1"],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert_eq!(out.json()["path"], "/sell/z");
    assert_eq!(plain.last_request().uri, "http://api.ebay.com/sell/z?x=1");
    assert_eq!(plain.last_request().method, "DELETE");
}

#[test]
fn curl_head_parsing_takes_last_head() {
    let dump = "HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nX-Signproxy-Error: body_too_large\r\n\r\n";
    let (status, headers) = client::parse_last_head(dump);
    assert_eq!(status, 413);
    assert_eq!(
        headers,
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "x-signproxy-error".to_string(),
                "body_too_large".to_string()
            ),
        ]
    );
}

#[test]
fn ca_writes_pem_files_and_client_config() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.write_ca_pem(dir.path());
    let key = ca.write_ca_key_pem(dir.path());
    let cert_text = std::fs::read_to_string(cert).unwrap();
    assert!(cert_text.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(cert_text, ca.ca_pem());
    assert!(std::fs::read_to_string(key)
        .unwrap()
        .contains("BEGIN PRIVATE KEY"));
    assert_eq!(pem_decode(&ca.ca_pem()).unwrap(), ca.ca_der().as_ref());
    let server = ca.server_config(&["a.test"]);
    assert_eq!(server.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let client = ca.client_config();
    assert_eq!(client.alpn_protocols, vec![b"http/1.1".to_vec()]);
}
