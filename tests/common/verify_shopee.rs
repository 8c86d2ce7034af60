//! An independent Shopee Open Platform v2 verifier, written from the spec (never calling
//! signproxy's signer): partner_id + path + timestamp (+ access_token + shop_id/merchant_id for
//! Shop and Merchant APIs), HMAC-SHA256 keyed with the partner key's text, 64 lowercase hex.

use super::received::Received;

/// Public APIs by the spec's path list: they sign partner_id, path and timestamp only.
pub fn shopee_is_public(path: &str) -> bool {
    path.starts_with("/api/v2/public/")
        || path.starts_with("/api/v2/auth/")
        || path == "/api/v2/shop/auth_partner"
        || path == "/api/v2/shop/cancel_auth_partner"
}

/// Lowercase hex HMAC-SHA256 of `base` keyed with `partner_key` as text (ring, not the hmac crate
/// the signer uses).
pub fn shopee_sign_hex(partner_key: &str, base: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, partner_key.as_bytes());
    hex::encode(ring::hmac::sign(&key, base.as_bytes()).as_ref())
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Result<&'a str, String> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    match values.as_slice() {
        [] => Err(format!("query parameter `{key}` is missing")),
        [v] => Ok(v),
        many => Err(format!(
            "query parameter `{key}` appears {} times",
            many.len()
        )),
    }
}

/// The base string the request should have been signed over, from what arrived.
pub fn shopee_base(r: &Received, partner_id: u64) -> Result<String, String> {
    let pairs = r.query_pairs();
    let path = r.path();
    if !path.starts_with("/api/v2/") {
        return Err(format!("path {path:?} does not start with /api/v2/"));
    }
    let got = one(&pairs, "partner_id")?;
    if got != partner_id.to_string() {
        return Err(format!("partner_id {got:?}, expected {partner_id}"));
    }
    let ts = one(&pairs, "timestamp")?;
    if ts.len() != 10 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("timestamp {ts:?} is not 10 digits of Unix seconds"));
    }
    let mut base = format!("{partner_id}{path}{ts}");
    if !shopee_is_public(path) {
        let token = one(&pairs, "access_token")?;
        let id = match one(&pairs, "merchant_id") {
            Ok(m) => m,
            Err(_) => one(&pairs, "shop_id")?,
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("id {id:?} is not an integer"));
        }
        base.push_str(token);
        base.push_str(id);
    }
    Ok(base)
}

/// Checks a Shopee signed request.
pub fn verify_shopee(r: &Received, partner_id: u64, partner_key: &str) -> Result<(), String> {
    let base = shopee_base(r, partner_id)?;
    let pairs = r.query_pairs();
    let sign = one(&pairs, "sign")?;
    if sign.len() != 64
        || !sign
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("sign {sign:?} is not 64 lowercase hex digits"));
    }
    let expected = shopee_sign_hex(partner_key, &base);
    if sign != expected {
        return Err(format!(
            "sign mismatch: got {sign}, expected {expected} over the base {base:?}"
        ));
    }
    Ok(())
}
