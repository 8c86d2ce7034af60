//! Properties of the signers over generated requests: signing never panics; TikTok's `sign` covers
//! the decoded, sorted pairs (so pair order and percent-encoding do not change it); eBay's
//! signature does not depend on how the client cased its header names or the host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use signproxy::clock::Timestamp;
use signproxy::marketplace::ebay::keys::load_private_key;
use signproxy::marketplace::ebay::sign::{self as ebay, EbayCredentials};
use signproxy::marketplace::tiktok::sign::TiktokCredentials;
use signproxy::marketplace::{Sign, SignInput};
use signproxy::request::prepare_head;
use signproxy::secret::Secret;
use signproxy::signing::{https_authority, RequestHead, SignError};

type Signed = signproxy::marketplace::Explained;

/// Signs through the [`Sign`] trait, as the proxy and `sign` do.
fn sign_with(
    signer: &dyn Sign,
    head: RequestHead,
    body: &[u8],
    access_token: Option<&Secret>,
    now: u64,
) -> Result<Signed, SignError> {
    let input = SignInput {
        head: &head,
        body,
        access_token,
        now: Timestamp::from_secs(now),
    };
    signproxy::marketplace::sign_explained(signer, input)
}

/// RFC 9421 B.1.4 `test-key-ed25519`.
const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
const RSA_PKCS8_PEM: &str = include_str!("fixtures/ebay/rsa2048-pkcs8.pem");

fn tiktok_signer() -> TiktokCredentials {
    TiktokCredentials {
        app_key: "29a39d".into(),
        app_secret: Secret::new("e59af819cc"),
        shop_cipher: Some("ROW_cipher".into()),
    }
}

fn ebay_creds(pem: &str) -> EbayCredentials {
    EbayCredentials {
        key: Arc::new(load_private_key(pem).unwrap()),
        jwe: Secret::new("eyJ6aXAiOiJERUYifQ.properties.jwe"),
        enforce_signature: false,
        expiry: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// Names the signers look at, plus arbitrary tokens.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "content-type",
            "Content-Type",
            "authorization",
            "x-ebay-api-iaf-token",
            "x-tts-access-token",
            "signature",
            "Signature-Input",
            "content-digest",
            "x-ebay-signature-key",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "x-signproxy-profile",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9-]{1,16}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            header_name(),
            prop_oneof![
                Just(b"multipart/form-data; boundary=x".to_vec()),
                Just(b"application/json".to_vec()),
                prop::collection::vec(any::<u8>(), 0..24),
            ],
        ),
        0..6,
    )
}

fn header_map(lines: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// A request as a client could send it, plus the signing time and the profile's token.
#[derive(Debug)]
struct Generated {
    method: Method,
    host: String,
    port: u16,
    path_and_query: String,
    lines: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    token: Option<String>,
    now: u64,
}

prop_compose! {
    fn request()(
        method in method(),
        host in "[A-Za-z0-9.-]{0,20}",
        port in any::<u16>(),
        path in ".{0,40}",
        query in prop::option::of(".{0,60}"),
        lines in headers(),
        body in prop::collection::vec(any::<u8>(), 0..128),
        token in prop::option::of(".{0,20}"),
        now in any::<u64>(),
    ) -> Generated {
        let path_and_query = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Generated { method, host, port, path_and_query, lines, body, token, now }
    }
}

/// Signs the way `signproxy sign` and the proxy do: `prepare_head`, then `Sign::sign` (and
/// `explain`). Errors are fine; a panic fails the property.
fn sign_like_the_cli(signer: &dyn Sign, r: Generated) {
    let Ok(head) = prepare_head(
        r.method,
        https_authority(&r.host, r.port),
        r.path_and_query,
        header_map(&r.lines),
        r.body.len(),
    ) else {
        return;
    };
    let token = r.token.map(Secret::new);
    let _ = sign_with(signer, head, &r.body, token.as_ref(), r.now);
}

fn query_value(signed: &Signed, key: &str) -> Option<String> {
    let query = signed.head.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

// ---------------------------------------------------------------------------------------------
// (a) signing never panics

proptest! {
    #[test]
    fn tiktok_signing_never_panics(r in request()) {
        sign_like_the_cli(&tiktok_signer(), r);
    }

    #[test]
    fn ebay_ed25519_signing_never_panics(r in request()) {
        sign_like_the_cli(&ebay_creds(ED25519_PEM), r);
    }
}

proptest! {
    // RSA-2048 signing costs milliseconds: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn ebay_rsa_signing_never_panics(r in request()) {
        sign_like_the_cli(&ebay_creds(RSA_PKCS8_PEM), r);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) TikTok: the signature covers the decoded, sorted pairs

/// One way of writing a byte in a query: `encoded` chooses, per byte, between the literal byte
/// (where that is unambiguous), `%XX` in either case, and `+` for a space, all of which the server
/// decodes to the same byte (spec step 1: `%XX` decoded, `+` is a space).
fn encode(text: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, b) in text.bytes().enumerate() {
        let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0);
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
                if choice % 2 == 0 =>
            {
                out.push(char::from(b))
            }
            b' ' if choice % 3 == 0 => out.push('+'),
            _ if choice % 5 == 0 => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decoded pairs with distinct keys that the signer does not own or drop.
fn decoded_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[a-zA-Z0-9_ .~+%&=é-]{0,8}", ".{0,12}", 0..8).prop_map(|map| {
        map.into_iter()
            .filter(|(k, _)| {
                !["sign", "timestamp", "app_key", "access_token"].contains(&k.as_str())
            })
            .collect()
    })
}

fn tiktok_sign(path_and_query: String, body: &[u8]) -> Signed {
    let head = RequestHead {
        method: Method::POST,
        authority: "open-api.tiktokglobalshop.com".into(),
        path_and_query,
        headers: HeaderMap::new(),
    };
    sign_with(&tiktok_signer(), head, body, None, 1_700_000_000).unwrap()
}

proptest! {
    #[test]
    fn tiktok_sign_ignores_pair_order_and_encoding(
        pairs in decoded_pairs(),
        order in any::<u64>(),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        other_choices in prop::collection::vec(any::<u8>(), 1..16),
        body in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let written = |pairs: &[(String, String)], choices: &[u8]| {
            pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k, choices), encode(v, choices)))
                .collect::<Vec<_>>()
                .join("&")
        };
        let plain: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        // Another order: a rotation by a generated amount, then reversed.
        let mut shuffled = pairs.clone();
        if !shuffled.is_empty() {
            let by = (order % shuffled.len() as u64) as usize;
            shuffled.rotate_left(by);
            shuffled.reverse();
        }

        let reference = tiktok_sign(format!("/product/202309/products?{plain}"), &body);
        for query in [written(&pairs, &choices), written(&shuffled, &other_choices)] {
            let other = tiktok_sign(format!("/product/202309/products?{query}"), &body);
            prop_assert_eq!(query_value(&other, "sign"), query_value(&reference, "sign"), "{}", query);
            prop_assert_eq!(&other.explanation, &reference.explanation);
        }
    }

    #[test]
    fn tiktok_sign_changes_with_a_decoded_value(
        pairs in decoded_pairs().prop_filter("needs a pair", |p| !p.is_empty()),
        extra in "[a-z]{1,4}",
    ) {
        let query = |pairs: &[(String, String)]| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        };
        let mut changed = pairs.clone();
        changed[0].1.push_str(&extra);
        let a = tiktok_sign(format!("/p?{}", query(&pairs)), b"");
        let b = tiktok_sign(format!("/p?{}", query(&changed)), b"");
        prop_assert_ne!(query_value(&a, "sign"), query_value(&b, "sign"));
    }
}

// ---------------------------------------------------------------------------------------------
// (c) eBay: header names are case-insensitive (RFC 9110 §5.1), @authority is lower-cased

/// `name` with the case of each letter flipped where `mask` says so.
fn recase(name: &str, mask: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            } else {
                c
            }
        })
        .collect()
}

fn ebay_sign(authority: &str, path: &str, lines: &[(String, Vec<u8>)], body: &[u8]) -> Signed {
    let head = RequestHead {
        method: Method::POST,
        authority: authority.to_owned(),
        path_and_query: path.to_owned(),
        headers: header_map(lines),
    };
    let token = Secret::new("v^1.1#properties-token");
    sign_with(
        &ebay_creds(ED25519_PEM),
        head,
        body,
        Some(&token),
        1_658_440_308,
    )
    .unwrap()
}

proptest! {
    #[test]
    fn ebay_signature_ignores_header_name_and_host_case(
        lines in headers(),
        mask in any::<u64>(),
        host_mask in any::<u64>(),
        path in prop::sample::select(vec![
            "/sell/finances/v1/seller_funds_summary",
            "/ws/api.dll",
            "/post-order/v2/return/1/issue_refund",
            "/verifysignature?x=1",
        ]),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let recased: Vec<(String, Vec<u8>)> = lines
            .iter()
            .map(|(name, value)| (recase(name, mask), value.clone()))
            .collect();
        let a = ebay_sign("apiz.ebay.com", path, &lines, &body);
        let b = ebay_sign(&recase("apiz.ebay.com", host_mask), path, &recased, &body);
        for name in [
            "content-digest",
            "signature-input",
            "signature",
            "host",
            "authorization",
            "x-ebay-api-iaf-token",
        ] {
            prop_assert_eq!(a.head.headers.get(name), b.head.headers.get(name), "{}", name);
        }
        prop_assert_eq!(&a.explanation, &b.explanation);
        let digest = a.head.headers.get("content-digest").map(|v| v.to_str().unwrap().to_owned());
        let expected = (!body.is_empty()).then(|| ebay::content_digest(&body));
        prop_assert_eq!(digest, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// (d) every marketplace of the example config, through the fuzz entry point

prop_compose! {
    /// An HTTP-like request aimed at the paths the marketplaces treat apart, with the bodies
    /// they parse (forms, multipart with a boundary, JSON) and arbitrary bytes besides.
    fn marketplace_request()(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
        prefix in prop::sample::select(vec![
            "/rest/", "/rest/auth/token/", "/sync", "/api/v2/shop/", "/api/v2/public/",
            "/api/v2/auth/", "/order/202309/", "/sell/finances/v1/", "/", "",
        ]),
        tail in "[a-z_/%+.0-9]{0,16}",
        query in prop::option::of("[a-z_=&%+0-9A-F]{0,40}"),
        content_type in prop::sample::select(vec![
            "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
            "multipart/form-data", "application/json",
        ]),
        body in prop::sample::select(vec![
            "".to_owned(),
            "a=1&b=%ZZ&c=+&=x&sign=1".to_owned(),
            "--b\r\ncontent-disposition: form-data; name=\"x\"\r\n\r\nv\r\n--b--\r\n".to_owned(),
            "--b\r\ncontent-disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n\u{ff}\r\n--b".to_owned(),
            "{\"refresh_token\":\"r\",\"code\":\"c\"}".to_owned(),
        ]),
        noise in prop::collection::vec(any::<u8>(), 0..24),
        now in prop::option::of(any::<u64>()),
    ) -> Vec<u8> {
        let mut text = format!("{method} {prefix}{tail}");
        if let Some(q) = query {
            text.push('?');
            text.push_str(&q);
        }
        text.push('\n');
        if !content_type.is_empty() {
            text.push_str(&format!("content-type: {content_type}\n"));
        }
        if let Some(now) = now {
            text.push_str(&format!("x-fuzz-now: {now}\n"));
        }
        text.push('\n');
        text.push_str(&body);
        let mut bytes = text.into_bytes();
        bytes.extend(noise);
        bytes
    }
}

proptest! {
    #[test]
    fn every_marketplace_signs_without_panicking_or_showing_the_token(data in marketplace_request()) {
        signproxy::fuzzing::every_marketplace(&data);
    }
}
