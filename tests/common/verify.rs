//! Independent signature verifiers (a second implementation: they never call signproxy code).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::keys::EbayPublicKey;
use super::received::{Received, Verdict};

/// What a test upstream checks on every request.
#[derive(Clone, Debug)]
pub enum Verifier {
    /// No check; the verdict is `{"scheme":"none","ok":true}`.
    None,
    Tiktok {
        app_key: String,
        app_secret: String,
    },
    Ebay {
        public_key: EbayPublicKey,
    },
    Shopee {
        partner_id: u64,
        partner_key: String,
    },
    /// Picks a verifier by the request's host (Host header without port, lower-cased; else SNI).
    /// Hosts not listed get `Verifier::None`.
    ByHost(Vec<(String, Verifier)>),
}

impl Verifier {
    pub fn tiktok(app_key: &str, app_secret: &str) -> Verifier {
        Verifier::Tiktok {
            app_key: app_key.to_string(),
            app_secret: app_secret.to_string(),
        }
    }

    pub fn ebay(public_key: EbayPublicKey) -> Verifier {
        Verifier::Ebay { public_key }
    }

    /// Runs the check.
    pub fn check(&self, r: &Received) -> Verdict {
        match self {
            Verifier::None => Verdict::none(),
            Verifier::Tiktok {
                app_key,
                app_secret,
            } => Verdict::from_result("tiktok", verify_tiktok(r, app_key, app_secret)),
            Verifier::Ebay { public_key } => {
                Verdict::from_result("ebay", verify_ebay(r, public_key))
            }
            Verifier::Shopee {
                partner_id,
                partner_key,
            } => Verdict::from_result(
                "shopee",
                super::verify_shopee::verify_shopee(r, *partner_id, partner_key),
            ),
            Verifier::ByHost(table) => {
                let host = r
                    .host_name()
                    .or_else(|| r.tls_sni.clone())
                    .unwrap_or_default();
                table
                    .iter()
                    .find(|(h, _)| h.eq_ignore_ascii_case(&host))
                    .map(|(_, v)| v.check(r))
                    .unwrap_or_else(Verdict::none)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TikTok Shop
// ---------------------------------------------------------------------------------------------

/// TikTok's string to sign, *without* the secret wrapper: path + sorted `{key}{value}` of the
/// decoded query pairs (except `sign`, `access_token`; for a repeated key the first value) + body
/// unless the content type's media type is multipart/form-data.
pub fn tiktok_string_to_sign(
    path: &str,
    pairs: &[(String, String)],
    body: &[u8],
    content_type: Option<&[u8]>,
) -> Vec<u8> {
    let mut sorted: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    for (k, v) in pairs {
        if k == "sign" || k == "access_token" {
            continue;
        }
        sorted.entry(k.as_bytes()).or_insert(v.as_bytes());
    }
    let mut s = path.as_bytes().to_vec();
    for (k, v) in sorted {
        s.extend_from_slice(k);
        s.extend_from_slice(v);
    }
    if !is_multipart(content_type) {
        s.extend_from_slice(body);
    }
    s
}

fn is_multipart(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let media = ct.split(|b| *b == b';').next().unwrap_or(&[]);
    media
        .trim_ascii()
        .eq_ignore_ascii_case(b"multipart/form-data")
}

/// Lowercase-hex HMAC-SHA256(secret, secret + string_to_sign + secret).
pub fn tiktok_sign_hex(app_secret: &str, string_to_sign: &[u8]) -> String {
    let mut wrapped = app_secret.as_bytes().to_vec();
    wrapped.extend_from_slice(string_to_sign);
    wrapped.extend_from_slice(app_secret.as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app_secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, &wrapped).as_ref())
}

fn single_param<'a>(pairs: &'a [(String, String)], key: &str) -> Result<&'a str, String> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    match values.as_slice() {
        [] => Err(format!("query parameter `{key}` is missing")),
        [one] => Ok(one),
        many => Err(format!(
            "query parameter `{key}` appears {} times",
            many.len()
        )),
    }
}

/// Checks a TikTok Shop signed request: `app_key` equals `app_key`, `timestamp` is 10 digits,
/// `sign` is 64 lowercase hex and equals the recomputed HMAC.
pub fn verify_tiktok(r: &Received, app_key: &str, app_secret: &str) -> Result<(), String> {
    let pairs = r.query_pairs();
    let got_key = single_param(&pairs, "app_key")?;
    if got_key != app_key {
        return Err(format!(
            "app_key mismatch: got {got_key:?}, expected {app_key:?}"
        ));
    }
    let ts = single_param(&pairs, "timestamp")?;
    if ts.len() != 10 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("timestamp {ts:?} is not 10 digits of Unix seconds"));
    }
    let sign = single_param(&pairs, "sign")?;
    if sign.len() != 64 || !sign.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sign {sign:?} is not 64 hex digits"));
    }
    if sign.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "sign {sign:?} has uppercase hex; TikTok requires lowercase"
        ));
    }
    let content_type = r.header("content-type");
    let sts = tiktok_string_to_sign(r.path(), &pairs, &r.body, content_type);
    let expected = tiktok_sign_hex(app_secret, &sts);
    if sign != expected {
        let mut shown = String::from_utf8_lossy(&sts).into_owned();
        if shown.len() > 600 {
            let mut cut = 600;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push_str("...");
        }
        return Err(format!(
            "sign mismatch: got {sign}, expected {expected}; string to sign (without the secret \
             wrapper, body {} bytes{}): {shown}",
            r.body.len(),
            if is_multipart(content_type) {
                ", multipart so not included"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// eBay (RFC 9421 + RFC 9530, eBay's profile)
// ---------------------------------------------------------------------------------------------

const EBAY_COMPONENTS_WITH_BODY: &str =
    r#""content-digest" "x-ebay-signature-key" "@method" "@path" "@authority""#;
const EBAY_COMPONENTS_NO_BODY: &str = r#""x-ebay-signature-key" "@method" "@path" "@authority""#;

/// `sha-256=:<base64>:` of `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(Sha256::digest(body)))
}

fn single_header<'a>(r: &'a Received, name: &str) -> Result<&'a [u8], String> {
    match r.header_all(name).as_slice() {
        [] => Err(format!("header `{name}` is missing")),
        [one] => Ok(one),
        many => Err(format!("header `{name}` appears {} times", many.len())),
    }
}

fn single_header_str<'a>(r: &'a Received, name: &str) -> Result<&'a str, String> {
    std::str::from_utf8(single_header(r, name)?)
        .map_err(|_| format!("header `{name}` is not UTF-8"))
}

/// The eBay signature base for `r`: one line per covered component (names from `components`, a
/// space-separated list of quoted names), then `"@signature-params": ` + `params`; LF-joined, no
/// trailing LF. `@authority` is the Host header as received (HTTP/2: the target's authority), `@path` the raw path without query.
pub fn ebay_signature_base(
    r: &Received,
    components: &str,
    params: &str,
) -> Result<Vec<u8>, String> {
    let mut base = Vec::new();
    for comp in components.split(' ') {
        let name = comp
            .strip_prefix('"')
            .and_then(|c| c.strip_suffix('"'))
            .ok_or_else(|| format!("component {comp:?} is not a quoted name"))?;
        let value: Vec<u8> = match name {
            "@method" => r.method.as_bytes().to_vec(),
            "@path" => {
                let p = r.path();
                if p.is_empty() { "/" } else { p }.as_bytes().to_vec()
            }
            "@authority" => authority(r)?,
            n if n.starts_with('@') => return Err(format!("unsupported derived component {n}")),
            n => single_header(r, n)?.to_vec(),
        };
        base.extend_from_slice(comp.as_bytes());
        base.extend_from_slice(b": ");
        base.extend_from_slice(&value);
        base.push(b'\n');
    }
    base.extend_from_slice(b"\"@signature-params\": ");
    base.extend_from_slice(params.as_bytes());
    Ok(base)
}

/// The Host header as received; for HTTP/2 (no Host header) the authority of the target.
fn authority(r: &Received) -> Result<Vec<u8>, String> {
    if r.has_header("host") || r.version != "HTTP/2.0" {
        return Ok(single_header(r, "host")?.to_vec());
    }
    r.uri
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or("").as_bytes().to_vec())
        .ok_or_else(|| "no Host header and no authority in the request target".to_string())
}

/// Checks an eBay signed request: exact `Signature-Input` shape and component list, present
/// `x-ebay-signature-key`, correct `Content-Digest` of the received body, and a valid signature
/// over the rebuilt base.
pub fn verify_ebay(r: &Received, key: &EbayPublicKey) -> Result<(), String> {
    single_header(r, "x-ebay-signature-key")?;
    let input = single_header_str(r, "signature-input")?;
    let params = input
        .strip_prefix("sig1=")
        .ok_or_else(|| format!("signature-input {input:?} does not start with `sig1=`"))?;
    let inner = params
        .strip_prefix('(')
        .ok_or_else(|| format!("signature-input {input:?}: no `(` after `sig1=`"))?;
    let (components, after) = inner
        .split_once(')')
        .ok_or_else(|| format!("signature-input {input:?}: no closing `)`"))?;
    let created = after.strip_prefix(";created=").ok_or_else(|| {
        format!("signature-input {input:?}: parameters must be exactly `;created=N`")
    })?;
    if created.is_empty() || !created.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "signature-input {input:?}: parameters must be exactly `;created=N` (N digits), got \
             {after:?}"
        ));
    }
    let expected_components = if r.body.is_empty() {
        EBAY_COMPONENTS_NO_BODY
    } else {
        EBAY_COMPONENTS_WITH_BODY
    };
    if components != expected_components {
        return Err(format!(
            "covered components ({components}) but expected ({expected_components}) for a {}",
            if r.body.is_empty() {
                "request without body"
            } else {
                "request with a body"
            }
        ));
    }
    let digest = content_digest(&r.body);
    match r.header_all("content-digest").as_slice() {
        [] if r.body.is_empty() => {}
        [] => return Err("content-digest is missing for a request with a body".into()),
        [one] => {
            if *one != digest.as_bytes() {
                return Err(format!(
                    "content-digest mismatch: got {:?}, the received body ({} bytes) has {digest}",
                    String::from_utf8_lossy(one),
                    r.body.len()
                ));
            }
        }
        many => {
            return Err(format!(
                "header `content-digest` appears {} times",
                many.len()
            ))
        }
    }
    let sig_header = single_header_str(r, "signature")?;
    let sig_b64 = sig_header
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .ok_or_else(|| format!("signature {sig_header:?} is not `sig1=:<base64>:`"))?;
    let sig = B64
        .decode(sig_b64)
        .map_err(|e| format!("signature is not standard base64: {e}"))?;
    let base = ebay_signature_base(r, components, params)?;
    let ok = match key {
        EbayPublicKey::Ed25519(raw) => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw)
                .verify(&base, &sig)
        }
        EbayPublicKey::RsaPkcs1Der(der) => ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            der,
        )
        .verify(&base, &sig),
    };
    ok.map_err(|_| {
        format!(
            "signature does not verify ({} key) over base:\n{}",
            match key {
                EbayPublicKey::Ed25519(_) => "Ed25519",
                EbayPublicKey::RsaPkcs1Der(_) => "RSA PKCS#1 v1.5 SHA-256",
            },
            String::from_utf8_lossy(&base)
        )
    })
}
