//! Entry points shared by the fuzz targets and the corpus regression test.
//!
//! Each function takes raw bytes and must return normally for every input. A panic is a finding:
//! either the library panicked, or one of the properties asserted here does not hold. The inputs
//! are split by hand (no `arbitrary`) so the library gains no dependency for this.
//!
//! The signer and request-target inputs are HTTP-like so that seeds stay readable:
//!
//! ```text
//! POST /order/202309/orders/search?page_size=20
//! content-type: application/json
//! x-fuzz-now: 1700000000
//!
//! {"order_status":"UNPAID"}
//! ```
//!
//! The first line is `METHOD TARGET` (a trailing ` HTTP/x.y` is dropped), then `name: value`
//! header lines up to the first empty line, then the body. Header lines named `x-fuzz-*` are
//! consumed here as settings (time, credentials, CONNECT target, SNI) instead of being sent.

// Its whole job is to fail loudly when a property breaks: the fuzzer and the corpus test
// report a panic as a finding.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Uri};

use crate::clock::Timestamp;
use crate::config::Config;
use crate::marketplace::ebay::keys::{load_private_key, PrivateKey};
use crate::marketplace::ebay::sign::{self as ebay, EbayCredentials};
use crate::marketplace::tiktok::sign::{self as tiktok, TiktokCredentials};
use crate::marketplace::{Sign, SignInput};
use crate::proxy::connect::{check_inner_authority, connect_target};
use crate::proxy::forward::absolute_target;
use crate::route::{route, Destination, Route};
use crate::secret::Secret;
use crate::signing::{media_type, split_path_query, RequestHead, SignError};

type Signed = crate::marketplace::Explained;

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
    crate::marketplace::sign_explained(signer, input)
}

/// RFC 9421 B.1.4 `test-key-ed25519`: a published test key, never a real credential.
const ED25519_TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";

const DEFAULT_NOW: u64 = 1_700_000_000;

/// An HTTP-like input, split but not yet validated.
struct Message<'a> {
    method: &'a [u8],
    target: &'a [u8],
    /// Every header line, in order, `x-fuzz-*` settings included.
    lines: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

impl<'a> Message<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let mut rest = data;
        let mut first: Option<&[u8]> = None;
        let mut lines = Vec::new();
        let mut body: &[u8] = &[];
        while !rest.is_empty() {
            let (line, after) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            rest = after;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if first.is_none() {
                first = Some(line);
                continue;
            }
            if line.is_empty() {
                body = rest;
                break;
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            };
            lines.push((trim(name), trim(value)));
        }
        let first = first.unwrap_or_default();
        let (method, target) = match first.iter().position(|&b| b == b' ') {
            Some(i) => (&first[..i], &first[i + 1..]),
            None => (first, &[][..]),
        };
        let target = match target.iter().rposition(|&b| b == b' ') {
            Some(i) if target[i + 1..].starts_with(b"HTTP/") => &target[..i],
            _ => target,
        };
        Message {
            method,
            target,
            lines,
            body,
        }
    }

    /// The last value of the setting `x-fuzz-NAME`, as text.
    fn setting(&self, name: &str) -> Option<String> {
        self.lines
            .iter()
            .rev()
            .find(|(n, _)| {
                n.len() == name.len() + 7
                    && n[..7].eq_ignore_ascii_case(b"x-fuzz-")
                    && n[7..].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Seconds that fit a millisecond [`Timestamp`] (any time before the year 584 million).
    fn now(&self) -> u64 {
        self.setting("now")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_NOW)
            .min(u64::MAX / 1000)
    }

    /// The header lines that are valid HTTP, settings left out: what a client could send.
    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.lines {
            if name.len() >= 7 && name[..7].eq_ignore_ascii_case(b"x-fuzz-") {
                continue;
            }
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        map
    }

    fn method(&self) -> Method {
        Method::from_bytes(self.method).unwrap_or(Method::GET)
    }

    fn head(&self, authority: String) -> RequestHead {
        RequestHead {
            method: self.method(),
            authority,
            path_and_query: String::from_utf8_lossy(self.target).into_owned(),
            headers: self.headers(),
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Same length and the same character classes (so the same header validity and emptiness), but a
/// different value wherever there is a letter or digit: what the secret-independence checks swap
/// in.
fn rotate(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            other => other,
        })
        .collect()
}

/// Both results as comparable text: the whole signed head, or the error.
fn outcome(result: &Result<Signed, SignError>) -> String {
    match result {
        Ok(signed) => format!(
            "{} {} {}\n{:?}\n{}",
            signed.head.method,
            signed.head.authority,
            signed.head.path_and_query,
            signed.head.headers,
            signed.explanation
        ),
        Err(e) => format!("{e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// TikTok Shop

/// Signs an arbitrary request with TikTok Shop credentials and checks: the same input signs the
/// same; the explanation and errors do not depend on the app secret or token; and the `sign`
/// parameter is the HMAC of what the server will decode from the query actually sent (path,
/// decoded pairs sorted byte-wise minus `sign`/`access_token`, body unless multipart).
pub fn tiktok_canonical(data: &[u8]) {
    let msg = Message::parse(data);
    let creds = TiktokCredentials {
        app_key: msg
            .setting("app-key")
            .unwrap_or_else(|| "29a39d".to_owned()),
        app_secret: Secret::new(
            msg.setting("secret")
                .unwrap_or_else(|| "e59af819cc".to_owned()),
        ),
        shop_cipher: msg.setting("cipher"),
    };
    let token = msg.setting("token").map(Secret::new);
    let now = msg.now();
    let head = msg.head("open-api.tiktokglobalshop.com".to_owned());

    let first = sign_with(&creds, head.clone(), msg.body, token.as_ref(), now);
    let again = sign_with(&creds, head.clone(), msg.body, token.as_ref(), now);
    assert_eq!(outcome(&first), outcome(&again), "signing is deterministic");

    let other_creds = TiktokCredentials {
        app_secret: Secret::new(rotate(creds.app_secret.expose())),
        ..creds.clone()
    };
    let other_token = token.as_ref().map(|t| Secret::new(rotate(t.expose())));
    let other = sign_with(
        &other_creds,
        head.clone(),
        msg.body,
        other_token.as_ref(),
        now,
    );
    match (&first, &other) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.explanation, b.explanation,
                "the explanation must not depend on the app secret"
            );
            let unsigned = |s: &Signed| {
                s.head
                    .path_and_query
                    .rsplit_once("sign=")
                    .map(|(before, _)| before.to_owned())
            };
            assert_eq!(
                unsigned(a),
                unsigned(b),
                "only `sign` depends on the secret"
            );
            let mut ha = a.head.headers.clone();
            let mut hb = b.head.headers.clone();
            ha.remove("x-tts-access-token");
            hb.remove("x-tts-access-token");
            assert_eq!(ha, hb, "only the token header depends on the token");
        }
        (Err(a), Err(b)) => assert_eq!(
            a.to_string(),
            b.to_string(),
            "an error must not depend on the secret or token"
        ),
        (a, b) => panic!(
            "the outcome depends on the secret or token: {} vs {}",
            outcome(a),
            outcome(b)
        ),
    }

    let Ok(signed) = first else { return };
    check_tiktok_signed(&head, msg.body, &creds, token.as_ref(), now, &signed);
}

fn check_tiktok_signed(
    before: &RequestHead,
    body: &[u8],
    creds: &TiktokCredentials,
    token: Option<&Secret>,
    now: u64,
    signed: &Signed,
) {
    let (path, query) = split_path_query(&signed.head.path_and_query);
    assert_eq!(
        path,
        before.path(),
        "the path is sent as the client sent it"
    );
    let query = query.unwrap_or_default();

    // What the server decodes from the wire.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    let unique = keys.len();
    keys.dedup();
    assert_eq!(unique, keys.len(), "every key is sent once: {query}");
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("app_key"), Some(creds.app_key.as_str()));
    let now_text = now.to_string();
    assert_eq!(value("timestamp"), Some(now_text.as_str()));
    let sign = value("sign").unwrap_or_default();
    assert!(
        sign.len() == 64 && sign.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "sign is 64 lowercase hex: {sign:?}"
    );

    let mut signed_pairs: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "sign" && k != "access_token")
        .collect();
    signed_pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut string = path.as_bytes().to_vec();
    for (k, v) in signed_pairs {
        string.extend_from_slice(k.as_bytes());
        string.extend_from_slice(v.as_bytes());
    }
    if media_type(&before.headers).as_deref() != Some("multipart/form-data") {
        string.extend_from_slice(body);
    }
    assert_eq!(
        tiktok::hmac_hex(creds.app_secret.expose(), &string),
        sign,
        "sign covers the decoded, sorted pairs the server will see"
    );

    let sent_token = signed.head.headers.get("x-tts-access-token");
    match (before.headers.get("x-tts-access-token"), token) {
        (Some(own), _) => assert_eq!(sent_token, Some(own), "the client's token is kept"),
        (None, Some(t)) => {
            assert_eq!(
                sent_token.map(HeaderValue::as_bytes),
                Some(t.expose().as_bytes())
            )
        }
        (None, None) => assert!(sent_token.is_none()),
    }
}

// ---------------------------------------------------------------------------------------------
// eBay

fn ed25519_test_key() -> Option<Arc<PrivateKey>> {
    static KEY: OnceLock<Option<Arc<PrivateKey>>> = OnceLock::new();
    KEY.get_or_init(|| load_private_key(ED25519_TEST_KEY).ok().map(Arc::new))
        .clone()
}

/// Signs an arbitrary request with eBay credentials (the RFC 9421 Ed25519 test key) and checks:
/// the same input signs the same; the explanation and errors do not depend on the JWE or token;
/// the headers sent carry exactly the components eBay expects, in order; a signature base
/// rebuilt independently from those headers verifies; and the token endpoint is left untouched.
pub fn ebay_signature_base(data: &[u8]) {
    let Some(key) = ed25519_test_key() else {
        return;
    };
    let msg = Message::parse(data);
    let creds = EbayCredentials {
        key,
        jwe: Secret::new(
            msg.setting("jwe")
                .unwrap_or_else(|| "eyJ6aXAiOiJERUYifQ.fuzz.jwe".to_owned()),
        ),
        enforce_signature: msg.setting("enforce").is_some(),
        expiry: None,
    };
    let token = msg.setting("token").map(Secret::new);
    let now = msg.now();
    let authority = msg
        .setting("authority")
        .unwrap_or_else(|| "api.ebay.com".to_owned());
    let head = msg.head(authority);

    let first = sign_with(&creds, head.clone(), msg.body, token.as_ref(), now);
    let again = sign_with(&creds, head.clone(), msg.body, token.as_ref(), now);
    assert_eq!(outcome(&first), outcome(&again), "signing is deterministic");

    let other_creds = EbayCredentials {
        jwe: Secret::new(rotate(creds.jwe.expose())),
        ..creds.clone()
    };
    let other_token = token.as_ref().map(|t| Secret::new(rotate(t.expose())));
    let other = sign_with(
        &other_creds,
        head.clone(),
        msg.body,
        other_token.as_ref(),
        now,
    );
    match (&first, &other) {
        (Ok(a), Ok(b)) => assert_eq!(
            a.explanation, b.explanation,
            "the explanation must not depend on the JWE or token"
        ),
        (Err(a), Err(b)) => assert_eq!(
            a.to_string(),
            b.to_string(),
            "an error must not depend on the JWE or token"
        ),
        (a, b) => panic!(
            "the outcome depends on the JWE or token: {} vs {}",
            outcome(a),
            outcome(b)
        ),
    }

    let Ok(signed) = first else { return };
    let path = head.path();
    if path.strip_suffix('/').unwrap_or(path) == ebay::TOKEN_ENDPOINT_PATH {
        // eBay: do not sign the token endpoint. Nothing about the request changes, not even
        // signature headers the client sent.
        assert_eq!(signed.head.headers, head.headers);
        assert_eq!(signed.head.path_and_query, head.path_and_query);
        return;
    }
    check_ebay_signed(&creds, msg.body, now, &signed);
}

/// The one value of `name`; more than one is a failure.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    assert!(all.next().is_none(), "exactly one {name} header");
    Some(first.as_bytes())
}

/// The one value of `name` as text (what the signer generates is ASCII).
fn single_str<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    single(headers, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
}

fn check_ebay_signed(creds: &EbayCredentials, body: &[u8], now: u64, signed: &Signed) {
    let headers = &signed.head.headers;
    let input = single_str(headers, "signature-input");
    let params = input.strip_prefix("sig1=").unwrap_or_default();
    let (list, created) = params
        .strip_prefix('(')
        .and_then(|p| p.split_once(')'))
        .unwrap_or_default();
    assert_eq!(
        created,
        format!(";created={now}"),
        "created is the only parameter"
    );
    let names: Vec<&str> = list.split(' ').map(|n| n.trim_matches('"')).collect();
    let expected: &[&str] = if body.is_empty() {
        &["x-ebay-signature-key", "@method", "@path", "@authority"]
    } else {
        &[
            "content-digest",
            "x-ebay-signature-key",
            "@method",
            "@path",
            "@authority",
        ]
    };
    assert_eq!(names, expected, "covered components, in eBay's order");

    let digest = single(headers, "content-digest");
    if body.is_empty() {
        assert!(digest.is_none(), "no Content-Digest without a body");
    } else {
        assert_eq!(digest, Some(ebay::content_digest(body).as_bytes()));
    }
    let authority = single_str(headers, "host");
    assert_eq!(authority, signed.head.authority);
    assert_eq!(authority, authority.to_ascii_lowercase());
    assert_eq!(
        single(headers, "x-ebay-signature-key"),
        Some(creds.jwe.expose().as_bytes())
    );

    // Rebuilt from the bytes that are sent, the way eBay's verifier does, not with
    // `signature_base`; the JWE may hold non-ASCII bytes, so this stays in bytes.
    let mut base: Vec<u8> = Vec::new();
    let mut masked = String::new();
    for name in &names {
        let value: Vec<u8> = match *name {
            "@method" => signed.head.method.as_str().into(),
            "@path" => match signed.head.path() {
                "" => "/".into(),
                p => p.into(),
            },
            "@authority" => authority.into(),
            other => single(headers, other).unwrap_or_default().to_vec(),
        };
        let shown = if *name == "x-ebay-signature-key" {
            "<jwe from profile>".into()
        } else {
            String::from_utf8_lossy(&value)
        };
        masked.push_str(&format!("\"{name}\": {shown}\n"));
        base.extend_from_slice(format!("\"{name}\": ").as_bytes());
        base.extend_from_slice(&value);
        base.push(b'\n');
    }
    masked.push_str(&format!("\"@signature-params\": {params}\n\n"));
    base.extend_from_slice(format!("\"@signature-params\": {params}").as_bytes());
    assert!(
        signed.explanation.starts_with(&masked),
        "the explanation shows the base with the JWE masked"
    );

    let signature = single_str(headers, "signature");
    let b64 = signature
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .unwrap_or_default();
    let bytes = STANDARD.decode(b64).unwrap_or_default();
    let PrivateKey::Ed25519(key) = creds.key.as_ref() else {
        return;
    };
    let verified = ed25519_dalek::Signature::from_slice(&bytes)
        .and_then(|sig| key.verifying_key().verify_strict(&base, &sig));
    assert!(
        verified.is_ok(),
        "the signature verifies over the rebuilt base:\n{}",
        String::from_utf8_lossy(&base)
    );
}

// ---------------------------------------------------------------------------------------------
// Config

/// Where relative secret files resolve: a folder that does not exist, so no fuzz input reads a
/// real file.
const NOWHERE: &str = "/nonexistent/signproxy-fuzz";
/// Keys whose string value is a literal secret.
const SECRET_KEYS: [&str; 5] = [
    "app_secret",
    "access_token",
    "refresh_token",
    "client_secret",
    "jwe",
];

/// Parses arbitrary text as a config and checks: parsing is deterministic; neither the result
/// (`Debug`) nor the error depends on the literal secrets in it; no run of private-key text leaks
/// into an error; and routing the hosts named on `#host NAME` lines (a comment to TOML) picks a
/// profile that serves the host.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let table = text.parse::<toml::Table>().ok();
    // An absolute path could name /dev/zero or a FIFO: a hang, not a finding. Relative ones all
    // resolve under NOWHERE and fail to read.
    if table.as_ref().is_some_and(names_absolute_file) {
        return;
    }
    let base = Path::new(NOWHERE);
    let first = Config::from_toml_str(text, base);
    let shown = |r: &Result<Config, crate::config::ConfigError>| match r {
        Ok(c) => format!("{c:?}"),
        Err(e) => format!("{e}\n{e:?}"),
    };
    assert_eq!(
        shown(&first),
        shown(&Config::from_toml_str(text, base)),
        "parsing is deterministic"
    );

    if let Some(table) = &table {
        let mut secrets = Vec::new();
        collect_strings(&toml::Value::Table(table.clone()), &mut secrets);
        let mut swapped = text.to_owned();
        for (key, value) in &secrets {
            if SECRET_KEYS.contains(&key.as_str()) {
                swapped = swap_literal(&swapped, value);
            }
        }
        if swapped != text {
            assert_eq!(
                shown(&first),
                shown(&Config::from_toml_str(&swapped, base)),
                "neither the config nor its error may depend on a literal secret"
            );
        }
        for (key, value) in &secrets {
            if key == "private_key" {
                check_key_error_leaks_nothing(text, value, &shown(&first));
            }
        }
    }

    let Ok(config) = first else { return };
    for line in text.lines() {
        let Some(host) = line.strip_prefix("#host ") else {
            continue;
        };
        let dest = Destination {
            host,
            port: 443,
            tunnel: false,
            https: true,
        };
        match route(&config, dest, None, None) {
            Ok(Route::Sign(profile)) => assert!(profile.serves(host)),
            Ok(Route::Passthrough) => {
                assert!(!config.profiles.iter().any(|p| p.serves(host)));
                assert!(config.proxy.passthrough.iter().any(|p| p.matches(host)));
            }
            Err(_) => {}
        }
    }
}

fn names_absolute_file(table: &toml::Table) -> bool {
    table.iter().any(|(key, value)| {
        let absolute = (key == "file" || key == "ca_file")
            && value.as_str().map_or(true, |p| Path::new(p).is_absolute());
        absolute
            || match value {
                toml::Value::Table(t) => names_absolute_file(t),
                toml::Value::Array(items) => items.iter().any(|v| match v {
                    toml::Value::Table(t) => names_absolute_file(t),
                    _ => false,
                }),
                _ => false,
            }
    })
}

/// Every `key = "string"` at any depth.
fn collect_strings(value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                if let Some(s) = v.as_str() {
                    out.push((k.clone(), s.to_owned()));
                }
                collect_strings(v, out);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// `text` with the literal `value` rotated in place, when it is distinctive enough to find: long,
/// present exactly once, and quoted. Same length, so error positions stay put.
fn swap_literal(text: &str, value: &str) -> String {
    if value.len() < 6 || text.matches(value).count() != 1 {
        return text.to_owned();
    }
    let Some(at) = text.find(value) else {
        return text.to_owned();
    };
    let before = text[..at].chars().next_back();
    let after = text[at + value.len()..].chars().next();
    let quoted = |c: Option<char>| matches!(c, Some('"' | '\''));
    if !quoted(before) || !quoted(after) {
        return text.to_owned();
    }
    format!(
        "{}{}{}",
        &text[..at],
        rotate(value),
        &text[at + value.len()..]
    )
}

/// No 16-character run of base64 text from the key (with a lower-case letter or digit, so not
/// just a PEM label) may appear in the error, unless the config also has it outside the key
/// (e.g. as a key name, which errors may quote).
fn check_key_error_leaks_nothing(text: &str, key_text: &str, error: &str) {
    const RUN: usize = 16;
    let elsewhere = text.replacen(key_text, "", 1);
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let bytes = key_text.as_bytes();
    for window in bytes.windows(RUN) {
        if !window.iter().all(|&b| is_b64(b))
            || !window
                .iter()
                .any(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            continue;
        }
        let run = String::from_utf8_lossy(window);
        if elsewhere.contains(run.as_ref()) {
            continue;
        }
        assert!(
            !error.contains(run.as_ref()),
            "key material `{run}` appears in: {error}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Request targets

/// Parses a request head the way the proxy does and checks each path: an absolute-form target
/// becomes scheme + lower-cased host + port; a CONNECT authority becomes host + port (443 by
/// default); and inside a tunnel (`x-fuzz-connect: HOST:PORT`, optional `x-fuzz-sni`), a request
/// is accepted only when its one Host (or its URI's host) and the SNI name the CONNECT host.
pub fn request_target(data: &[u8]) {
    let msg = Message::parse(data);
    let headers = msg.headers();
    let Ok(uri) = Uri::try_from(msg.target) else {
        return;
    };

    if msg.method() == Method::CONNECT {
        if let Ok(target) = connect_target(&uri) {
            let authority = uri.authority().map(|a| (a.host(), a.port_u16()));
            assert_eq!(
                Some(target.host.as_str()),
                authority.map(|(h, _)| h.to_ascii_lowercase()).as_deref()
            );
            assert_eq!(
                target.port,
                Some(authority.and_then(|(_, p)| p).unwrap_or(443))
            );
            assert!(target.https);
        } else {
            assert!(uri.authority().is_none(), "a CONNECT authority is accepted");
        }
    } else if let Ok(target) = absolute_target(&uri) {
        assert_eq!(target.host, target.host.to_ascii_lowercase());
        assert_eq!(target.https, uri.scheme_str() == Some("https"));
        assert!(target.https || uri.scheme_str() == Some("http"));
        assert_eq!(target.port, uri.port_u16());
    } else {
        assert!(!matches!(uri.scheme_str(), Some("http" | "https")));
    }

    let Some(connect) = msg.setting("connect") else {
        return;
    };
    let Ok(connect_uri) = connect.parse::<Uri>() else {
        return;
    };
    let Ok(tunnel) = connect_target(&connect_uri) else {
        return;
    };
    let sni = msg.setting("sni");
    let checked = check_inner_authority(&uri, &headers, &tunnel.host, sni.as_deref());
    if checked.is_err() {
        return;
    }
    if let Some(sni) = &sni {
        assert!(sni.eq_ignore_ascii_case(&tunnel.host));
    }
    let hosts: Vec<&HeaderValue> = headers.get_all(HOST).iter().collect();
    assert!(hosts.len() <= 1, "a request with two Host lines is refused");
    match uri.host() {
        Some(host) => assert!(host.eq_ignore_ascii_case(&tunnel.host)),
        None => {
            let value = hosts
                .first()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(!value.contains('@'), "a Host with userinfo is refused");
            let host = match value.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => value,
            };
            assert!(
                host.eq_ignore_ascii_case(&tunnel.host),
                "Host {value:?} names the CONNECT host {:?}",
                tunnel.host
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The egress guard's address classifier

/// Four bytes are an IPv4 address, sixteen an IPv6 one (the rest of the input is ignored). What
/// must hold: an IPv4 address and its `::ffff:` form are judged alike; every loopback,
/// unspecified, multicast or link-local address std recognises is refused; an empty policy
/// refuses exactly what `classify` flags; the proxy's own address is refused whatever
/// `allow_networks` opens.
pub fn addr_classify(data: &[u8]) {
    use crate::egress::{classify, AddrClass, EgressPolicy};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    let ip = match data.len() {
        4..=15 => {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&data[..4]);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        16.. => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&data[..16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return,
    };
    let class = classify(ip);
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        assert!(class.is_some(), "{ip} must be refused");
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_private() || v4.is_link_local() || v4.is_broadcast() {
            assert!(class.is_some(), "{ip} must be refused");
        }
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            classify(mapped),
            class,
            "{ip} and {mapped} are one destination"
        );
    }
    let addr = SocketAddr::new(ip, 443);
    let empty = EgressPolicy::default();
    assert_eq!(empty.check(addr).is_ok(), class.is_none(), "{ip}");
    let everything = EgressPolicy {
        allow_networks: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        own_addresses: vec![addr],
    };
    let refused = everything.check(addr).unwrap_err();
    assert_eq!(refused.class, AddrClass::ProxyItself, "{ip}");
}

// ---------------------------------------------------------------------------------------------
// Every marketplace, through the seam

/// The shipped example's profiles: one per marketplace, with its demo credentials.
fn example_profiles() -> &'static [Arc<crate::config::Profile>] {
    static PROFILES: OnceLock<Vec<Arc<crate::config::Profile>>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let text = include_str!("../config/signproxy.example.toml");
        Config::from_toml_str(text, Path::new(NOWHERE))
            .map(|c| c.profiles.clone())
            .unwrap_or_else(|e| panic!("the shipped example config no longer parses: {e}"))
    })
}

/// One HTTP-like request through every marketplace's signer, explanation, doctor and answer
/// checks, as the example config's profiles: nothing panics; the same input signs the same; a
/// signed head keeps the request's path; and the access token handed to the signer never shows
/// in an explanation or an error.
pub fn every_marketplace(data: &[u8]) {
    const TOKEN: &str = "FUZZ-ACCESS-TOKEN-7f3a9c";
    let msg = Message::parse(data);
    let token = Secret::new(TOKEN);
    let now = msg.now();
    let body = msg.body;
    for profile in example_profiles() {
        let host = profile
            .hosts
            .first()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut head = msg.head(host);
        // As `prepare_head` hands every head to a signer: the path starts with `/`.
        if !head.path_and_query.starts_with('/') {
            head.path_and_query.insert(0, '/');
        }
        let input = SignInput {
            head: &head,
            body,
            access_token: Some(&token),
            now: Timestamp::from_secs(now),
        };
        let signer = profile.signer.as_ref();
        let _ = signer.token_need(&head);
        let first = crate::marketplace::sign_explained(signer, input);
        let again = crate::marketplace::sign_explained(signer, input);
        assert_eq!(
            outcome(&first),
            outcome(&again),
            "{}: signing is deterministic",
            profile.qualified_name()
        );
        match &first {
            Ok(signed) => {
                let (before, _) = split_path_query(&head.path_and_query);
                let (after, _) = split_path_query(&signed.head.path_and_query);
                assert_eq!(
                    after,
                    before,
                    "{}: the path is kept",
                    profile.qualified_name()
                );
                assert!(
                    !signed.explanation.contains(TOKEN),
                    "{}: the explanation shows the access token",
                    profile.qualified_name()
                );
            }
            Err(e) => assert!(
                !format!("{e}{e:?}").contains(TOKEN),
                "{}: an error shows the access token",
                profile.qualified_name()
            ),
        }
        let _ = signer.diagnose(&head, body, Timestamp::from_secs(now));
        let _ = signer.rejection(http::StatusCode::OK, body);
        let _ = profile.token.is_expired_answer(http::StatusCode::OK, body);
    }
}
