//! The IOP doctor: given a request the user's own code signed (system parameters in the query
//! or in the form, as the official SDKs send them), recompute its `sign` for its own
//! `timestamp` and, when it differs, find which known mistake reproduces it.

use sha2::{Digest, Sha256};

use super::multipart;
use super::sign::{api_prefix, base_string, hmac_upper_hex, masked, IopCredentials, SECRET_PARAMS};
use super::TIMESTAMP_WINDOW_SECS;
use crate::clock::Timestamp;
use crate::marketplace::Diagnosis;
use crate::signing::{media_type, RequestHead};

/// One pair as sent (still encoded) and as the gateway decodes it, and where it came from.
struct Param {
    raw: (String, String),
    decoded: (String, String),
    in_body: bool,
}

pub fn diagnose(
    creds: &IopCredentials,
    head: &RequestHead,
    body: &[u8],
    now: Timestamp,
) -> Diagnosis {
    let params = collect(head, body);
    let value = |key: &str| {
        params
            .iter()
            .find(|p| p.decoded.0 == key)
            .map(|p| p.decoded.1.clone())
    };
    let mut notes = Vec::new();
    let Some(user_sign) = value("sign") else {
        return Diagnosis::invalid(
            "the request carries no `sign` parameter",
            String::new(),
            notes,
        );
    };
    match value("app_key") {
        None => notes.push("the request has no `app_key` parameter".to_owned()),
        Some(key) if key != creds.app_key => notes.push(format!(
            "`app_key` is `{key}` but the profile's is `{}`: the request was signed for another app",
            creds.app_key
        )),
        Some(_) => {}
    }
    match value("sign_method").as_deref() {
        Some("sha256") => {}
        other => notes.push(format!(
            "`sign_method` is {}: the gateway's HMAC-SHA256 needs `sha256`",
            other.map_or("missing".to_owned(), |m| format!("`{m}`"))
        )),
    }
    notes.extend(timestamp_notes(value("timestamp").as_deref(), now));

    let path = match head.path() {
        "" => "/",
        path => path,
    };
    let prefix = match api_prefix(creds.policy, path) {
        Ok(prefix) => prefix,
        Err(e) => return Diagnosis::invalid(&e.to_string(), String::new(), notes),
    };
    let signed: Vec<(String, String)> = params
        .iter()
        .filter(|p| p.decoded.0 != "sign")
        .map(|p| p.decoded.clone())
        .collect();
    let secret = creds.app_secret.expose();
    let expected_base = base_string(prefix, &signed);
    let expected = hmac_upper_hex(secret, &expected_base);
    let shown = |base: &[u8]| mask_tokens(&String::from_utf8_lossy(base), &signed);
    if user_sign == expected {
        return Diagnosis {
            valid: true,
            verdict: "the signature is right for this request and its timestamp".to_owned(),
            mistake: None,
            expected: shown(&expected_base),
            signed: None,
            notes,
        };
    }
    for (mistake, base, digest) in variants(prefix, path, &params, &signed, secret) {
        if digest == user_sign {
            return Diagnosis {
                valid: false,
                verdict: format!("the signature is wrong: {mistake}"),
                mistake: Some(mistake.to_owned()),
                expected: shown(&expected_base),
                signed: Some(shown(&base)),
                notes,
            };
        }
    }
    Diagnosis::invalid(
        "the signature is wrong, and none of the usual mistakes reproduces it (a different app secret?)",
        shown(&expected_base),
        notes,
    )
}

/// Every known mistake: what it signs and the `sign` it yields.
fn variants(
    prefix: &str,
    path: &str,
    params: &[Param],
    signed: &[(String, String)],
    secret: &str,
) -> Vec<(&'static str, Vec<u8>, String)> {
    let hmac = |base: Vec<u8>| {
        let digest = hmac_upper_hex(secret, &base);
        (base, digest)
    };
    let mut out = Vec::new();
    let (base, digest) = hmac(base_string(prefix, signed));
    out.push((
        "the hex is lower-case; the gateway wants upper-case",
        base,
        digest.to_ascii_lowercase(),
    ));
    if prefix.is_empty() {
        let (base, digest) = hmac(base_string(path, signed));
        out.push((
            "`/sync` is signed as a prefix; business APIs on /sync are signed with no prefix",
            base,
            digest,
        ));
    } else {
        let (base, digest) = hmac(base_string(path, signed));
        out.push((
            "`/rest` is part of the signed prefix; the prefix is the API name after /rest (e.g. `/order/get`)",
            base,
            digest,
        ));
        let (base, digest) = hmac(base_string("", signed));
        out.push((
            "the API name is missing from the string to sign; /rest/<api> calls start it with `/<api>`",
            base,
            digest,
        ));
    }
    let query_only: Vec<(String, String)> = params
        .iter()
        .filter(|p| !p.in_body && p.decoded.0 != "sign")
        .map(|p| p.decoded.clone())
        .collect();
    if query_only.len() != signed.len() {
        let (base, digest) = hmac(base_string(prefix, &query_only));
        out.push((
            "the form-body parameters are left out; the signature covers query and form (and multipart text) parameters alike",
            base,
            digest,
        ));
    }
    let mut in_order = prefix.as_bytes().to_vec();
    for (k, v) in signed.iter().filter(|(_, v)| !v.is_empty()) {
        in_order.extend_from_slice(k.as_bytes());
        in_order.extend_from_slice(v.as_bytes());
    }
    let (base, digest) = hmac(in_order);
    out.push((
        "the parameters are signed in the order sent; they must be sorted by name (byte order)",
        base,
        digest,
    ));
    let raw: Vec<(String, String)> = params
        .iter()
        .filter(|p| p.decoded.0 != "sign")
        .map(|p| p.raw.clone())
        .collect();
    if raw != signed {
        let (base, digest) = hmac(base_string(prefix, &raw));
        out.push((
            "the values are signed percent-encoded; the gateway signs them decoded (`%3D` is `=`)",
            base,
            digest,
        ));
    }
    let base = base_string(prefix, signed);
    let plain = hex::encode_upper(Sha256::digest(&base));
    out.push((
        "the string is hashed with plain SHA-256; it must be HMAC-SHA256 keyed with the app secret",
        base,
        plain,
    ));
    out
}

/// Query pairs, then form fields or multipart text fields, in the order sent.
fn collect(head: &RequestHead, body: &[u8]) -> Vec<Param> {
    let decode = |raw: &str| -> String {
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    let encoded = |text: &str, in_body: bool| -> Vec<Param> {
        text.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Param {
                    raw: (k.to_owned(), v.to_owned()),
                    decoded: (decode(k), decode(v)),
                    in_body,
                }
            })
            .collect()
    };
    let mut params = encoded(head.query().unwrap_or(""), false);
    match media_type(&head.headers).as_deref() {
        Some("application/x-www-form-urlencoded") => {
            params.extend(encoded(&String::from_utf8_lossy(body), true));
        }
        Some("multipart/form-data") => {
            let content_type = head
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let parts = multipart::boundary(content_type)
                .and_then(|b| multipart::parse(body, &b).ok())
                .unwrap_or_default();
            for part in parts.into_iter().filter(|p| !p.is_file) {
                let value = String::from_utf8_lossy(part.value).into_owned();
                params.push(Param {
                    raw: (part.name.clone(), value.clone()),
                    decoded: (part.name, value),
                    in_body: true,
                });
            }
        }
        _ => {}
    }
    params
}

/// Tokens' and codes' values, shown by name only.
fn mask_tokens(text: &str, params: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in params {
        if SECRET_PARAMS.contains(&k.as_str()) && !v.is_empty() {
            out = out.replace(&format!("{k}{v}"), &format!("{k}{}", masked(k)));
        }
    }
    out
}

/// Unix milliseconds within the window; seconds named as such.
fn timestamp_notes(timestamp: Option<&str>, now: Timestamp) -> Vec<String> {
    let Some(text) = timestamp else {
        return vec!["the request has no `timestamp` parameter".to_owned()];
    };
    // ISO-8601 UTC (`2017-11-11T12:00:00Z`) is also accepted by the gateway: not judged here.
    if text.contains('T') {
        return Vec::new();
    }
    let Ok(ts) = text.parse::<u64>() else {
        return vec![format!("`timestamp` `{text}` is not Unix milliseconds")];
    };
    let mut notes = Vec::new();
    let ms = if text.len() <= 10 {
        notes.push(format!(
            "`timestamp` {text} is in seconds; the gateway wants Unix milliseconds (13 digits)"
        ));
        ts.saturating_mul(1000)
    } else {
        ts
    };
    let off = ms.abs_diff(now.millis()) / 1000;
    if off > TIMESTAMP_WINDOW_SECS {
        notes.push(format!(
            "`timestamp` is {off} s from this machine's clock; the gateway accepts at most {TIMESTAMP_WINDOW_SECS} s: sign every request, retries included, with the current time"
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::super::sign::tests::{creds, head};
    use super::*;
    use http::Method;

    const VECTOR_SIGN: &str = "4190D32361CFB9581350222F345CB77F3B19F0E31D162316848A2C1FFD5FAB4A";
    const NOW: Timestamp = Timestamp::from_millis(1_517_820_392_000 + 5_000);

    fn vector_query(sign: &str, ts: &str) -> String {
        format!("/rest/order/get?app_key=123456&access_token=test&order_id=1234&sign_method=sha256&timestamp={ts}&sign={sign}")
    }

    fn doctor(pq: &str, headers: &[(&str, &str)], body: &[u8]) -> Diagnosis {
        diagnose(
            &creds("helloworld", "123456"),
            &head(Method::POST, pq, headers),
            body,
            NOW,
        )
    }

    /// Signs `base` as the client's broken code would have.
    fn hmac(base: &str) -> String {
        hmac_upper_hex("helloworld", base.as_bytes())
    }

    #[test]
    fn the_official_vector_is_valid_and_its_token_masked() {
        let d = doctor(&vector_query(VECTOR_SIGN, "1517820392000"), &[], b"");
        assert!(d.valid, "{d:?}");
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(
            d.expected,
            "/order/getaccess_token<access_token>app_key123456order_id1234sign_methodsha256timestamp1517820392000"
        );
    }

    #[test]
    fn each_known_mistake_is_named() {
        let base =
            "access_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000";
        let cases = [
            (VECTOR_SIGN.to_ascii_lowercase(), "lower-case"),
            (hmac(&format!("/rest/order/get{base}")), "`/rest` is part of the signed prefix"),
            (hmac(base), "API name is missing"),
            (
                hmac("/order/getapp_key123456access_tokentestorder_id1234sign_methodsha256timestamp1517820392000"),
                "order sent",
            ),
            ({
                use sha2::Digest;
                hex::encode_upper(Sha256::digest(format!("/order/get{base}")))
            }, "plain SHA-256"),
        ];
        for (sign, named) in cases {
            let q = vector_query(&sign, "1517820392000");
            let d = doctor(&q, &[], b"");
            assert!(!d.valid);
            assert!(
                d.mistake.as_deref().unwrap_or("").contains(named),
                "{named}: {d:?}"
            );
        }
        // Insertion order needs a request sent in another order than sorted.
        let sent = "/rest/order/get?order_id=1234&app_key=123456&sign_method=sha256&timestamp=1517820392000";
        let sign =
            hmac("/order/getorder_id1234app_key123456sign_methodsha256timestamp1517820392000");
        let d = doctor(&format!("{sent}&sign={sign}"), &[], b"");
        assert!(
            d.mistake.as_deref().unwrap().contains("order sent"),
            "{d:?}"
        );
    }

    #[test]
    fn sync_prefix_and_form_params_left_out_are_named() {
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let body = b"method=aliexpress.trade.seller.orderlist.get&page_size=20";
        let sys = "app_key123456sign_methodsha256timestamp1517820392000";
        let query = "app_key=123456&sign_method=sha256&timestamp=1517820392000";
        let right = hmac("app_key123456methodaliexpress.trade.seller.orderlist.getpage_size20sign_methodsha256timestamp1517820392000");
        assert!(doctor(&format!("/sync?{query}&sign={right}"), &form, body).valid);
        let with_prefix = hmac("/syncapp_key123456methodaliexpress.trade.seller.orderlist.getpage_size20sign_methodsha256timestamp1517820392000");
        let d = doctor(&format!("/sync?{query}&sign={with_prefix}"), &form, body);
        assert!(
            d.mistake
                .as_deref()
                .unwrap()
                .contains("`/sync` is signed as a prefix"),
            "{d:?}"
        );
        let left_out = hmac(sys);
        let d = doctor(&format!("/sync?{query}&sign={left_out}"), &form, body);
        assert!(
            d.mistake
                .as_deref()
                .unwrap()
                .contains("form-body parameters are left out"),
            "{d:?}"
        );
        // System params in the form, as the SDKs send them, are judged like query ones.
        let all_in_form = format!(
            "method=aliexpress.trade.seller.orderlist.get&page_size=20&{query}&sign={right}"
        );
        assert!(doctor("/sync", &form, all_in_form.as_bytes()).valid);
    }

    #[test]
    fn seconds_and_stale_timestamps_and_other_apps_are_noted() {
        let sign = hmac("/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392");
        let d = doctor(&vector_query(&sign, "1517820392"), &[], b"");
        assert!(d.valid, "the sign matches what was sent: {d:?}");
        assert!(
            d.notes.iter().any(|n| n.contains("in seconds")),
            "{:?}",
            d.notes
        );
        let d = doctor(
            &vector_query(VECTOR_SIGN, "1517820392000").replace("1517820392000", "1517810000000"),
            &[],
            b"",
        );
        assert!(
            d.notes.iter().any(|n| n.contains("7200 s")),
            "{:?}",
            d.notes
        );
        let d = doctor(
            &vector_query(VECTOR_SIGN, "1517820392000").replace("app_key=123456", "app_key=999"),
            &[],
            b"",
        );
        assert!(
            d.notes.iter().any(|n| n.contains("another app")),
            "{:?}",
            d.notes
        );
        let d = doctor("/rest/order/get?app_key=123456", &[], b"");
        assert_eq!(d.verdict, "the request carries no `sign` parameter");
    }
}
