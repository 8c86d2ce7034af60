//! The TikTok Shop doctor: given a request the user's own code signed, recompute the `sign` for
//! its own `timestamp` and, when it differs, find which known mistake reproduces it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::sign::{concat, hmac_hex, string_to_sign, TiktokCredentials};
use super::{TIMESTAMP_MAX_AGE_SECS, TIMESTAMP_MAX_AHEAD_SECS};
use crate::clock::Timestamp;
use crate::marketplace::Diagnosis;
use crate::signing::{media_type, RequestHead};

/// The example timestamp in TikTok's documentation: code that hard-codes it fails at once.
const DOC_EXAMPLE_TIMESTAMP: u64 = 1_623_812_664;

/// One way of getting the signature wrong: what is signed, how it is wrapped and printed.
struct Variant {
    mistake: &'static str,
    inner: Vec<u8>,
    wrapped: bool,
    uppercase: bool,
}

pub fn diagnose(
    creds: &TiktokCredentials,
    head: &RequestHead,
    body: &[u8],
    now: Timestamp,
) -> Diagnosis {
    let raw_query = head.query().unwrap_or("");
    let raw_pairs: Vec<(&str, &str)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let decode = |raw: &str| -> String {
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    let decoded: Vec<(String, String)> = raw_pairs
        .iter()
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let value = |key: &str| {
        decoded
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let path = match head.path() {
        "" => "/",
        path => path,
    };

    let mut notes = Vec::new();
    let Some(user_sign) = value("sign") else {
        return Diagnosis::invalid(
            "the request carries no `sign` query parameter",
            String::new(),
            notes,
        );
    };
    match value("app_key") {
        None => notes.push("the request has no `app_key` query parameter".to_owned()),
        Some(key) if key != creds.app_key => notes.push(format!(
            "`app_key` is `{key}` but the profile's is `{}`: the request was signed for another app",
            creds.app_key
        )),
        Some(_) => {}
    }
    notes.extend(timestamp_notes(value("timestamp").as_deref(), now));

    let canonical: Vec<(String, String)> = decoded
        .iter()
        .filter(|(k, _)| k != "sign" && k != "access_token")
        .cloned()
        .collect();
    let multipart = media_type(&head.headers).as_deref() == Some("multipart/form-data");
    let signed_body: &[u8] = if multipart { &[] } else { body };
    let expected_inner = string_to_sign(path, &canonical, signed_body);
    let secret = creds.app_secret.expose();
    let expected = hmac_hex(secret, &expected_inner);
    let shown =
        |inner: &[u8]| format!("<app_secret>{}<app_secret>", String::from_utf8_lossy(inner));
    if user_sign == expected {
        return Diagnosis {
            valid: true,
            verdict: "the signature is right for this request and its timestamp".to_owned(),
            mistake: None,
            expected: shown(&expected_inner),
            signed: None,
            notes,
        };
    }

    // The same parameters as they were on the wire, still percent-encoded.
    let raw: Vec<(String, String)> = raw_pairs
        .iter()
        .zip(&decoded)
        .filter(|(_, (k, _))| k != "sign" && k != "access_token")
        .map(|((k, v), _)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for variant in variants(path, &decoded, &canonical, &raw, body, multipart) {
        let digest = if variant.wrapped {
            hmac_hex(secret, &variant.inner)
        } else {
            bare_hmac_hex(secret, &variant.inner)
        };
        let digest = if variant.uppercase {
            digest.to_ascii_uppercase()
        } else {
            digest
        };
        if digest == user_sign {
            let signed = if variant.wrapped {
                shown(&variant.inner)
            } else {
                String::from_utf8_lossy(&variant.inner).into_owned()
            };
            return Diagnosis {
                valid: false,
                verdict: format!("the signature is wrong: {}", variant.mistake),
                mistake: Some(variant.mistake.to_owned()),
                expected: shown(&expected_inner),
                signed: Some(signed),
                notes,
            };
        }
    }
    Diagnosis::invalid(
        "the signature is wrong, and none of the usual mistakes reproduces it (a different app secret?)",
        shown(&expected_inner),
        notes,
    )
}

/// Every mistake the doctor knows, as the string it would have signed.
fn variants(
    path: &str,
    decoded: &[(String, String)],
    canonical: &[(String, String)],
    raw: &[(String, String)],
    body: &[u8],
    multipart: bool,
) -> Vec<Variant> {
    let signed_body: &[u8] = if multipart { &[] } else { body };
    let variant = |mistake, inner| Variant {
        mistake,
        inner,
        wrapped: true,
        uppercase: false,
    };
    let mut out = vec![
        Variant {
            uppercase: true,
            ..variant("the hex is upper-case; TikTok wants lower-case", string_to_sign(path, canonical, signed_body))
        },
        Variant {
            wrapped: false,
            ..variant(
                "the string to sign is not wrapped in the app secret (it must be secret + string + secret)",
                string_to_sign(path, canonical, signed_body),
            )
        },
    ];
    let with = |key: &str| -> Vec<(String, String)> {
        decoded
            .iter()
            .filter(|(k, _)| k != "sign" && k != "access_token" || k == key)
            .cloned()
            .collect()
    };
    if decoded.iter().any(|(k, _)| k == "access_token") {
        out.push(variant(
            "`access_token` is among the signed parameters; it must be left out",
            string_to_sign_unfiltered(path, &with("access_token"), signed_body),
        ));
    }
    out.push(variant(
        "`sign` itself is among the signed parameters; it must be left out",
        string_to_sign_unfiltered(path, &with("sign"), signed_body),
    ));
    let mut no_path = string_to_sign(path, canonical, signed_body);
    no_path.drain(..path.len());
    out.push(variant(
        "the path is missing from the string to sign",
        no_path,
    ));
    out.push(variant(
        "the parameters are signed in the order sent; they must be sorted by name (byte order)",
        concat(path, canonical.iter(), signed_body),
    ));
    if raw != canonical {
        out.push(variant(
            "the values are signed percent-encoded; TikTok signs them decoded (`%3D` is `=`)",
            string_to_sign(path, raw, signed_body),
        ));
    }
    if !body.is_empty() && !multipart {
        out.push(variant(
            "the body is missing from the string to sign (POST and PUT bodies are signed as sent)",
            string_to_sign(path, canonical, b""),
        ));
        for (how, other) in reserialized(body) {
            out.push(variant(how, string_to_sign(path, canonical, &other)));
        }
    }
    if multipart && !body.is_empty() {
        out.push(variant(
            "the multipart body is signed; TikTok leaves multipart/form-data bodies out",
            string_to_sign(path, canonical, body),
        ));
    }
    out
}

/// The string to sign with `params` taken as they are (no `sign`/`access_token` filter).
fn string_to_sign_unfiltered(path: &str, params: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    concat(path, sorted, body)
}

/// The same JSON as other bytes, the way common clients re-serialize it: compact (JavaScript's
/// `JSON.stringify`, Go's `json.Marshal` of a struct), Python's `json.dumps` separators
/// (`requests(json=...)` sends that), each in the order sent and with keys sorted (Go maps,
/// `sort_keys=True`): the latter also covers "key order changed".
fn reserialized(body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut sorted = value.clone();
    sort_keys(&mut sorted);
    let variants: [(&'static str, Option<Vec<u8>>); 4] = [
        (
            "the body was signed re-serialized compact (`{\"a\":1}`) but sent with other bytes: sign exactly the bytes sent",
            serde_json::to_vec(&value).ok(),
        ),
        (
            "the body was signed re-serialized (compact `{\"a\":1}`, keys sorted) but sent with other bytes: sign exactly the bytes sent",
            serde_json::to_vec(&sorted).ok(),
        ),
        (
            "the body was signed as Python's json.dumps writes it (`{\"a\": 1}`) but sent with other bytes: sign exactly the bytes sent",
            Some(python_dumps(&value).into_bytes()),
        ),
        (
            "the body was signed as Python's json.dumps(sort_keys=True) writes it (`{\"a\": 1}`, keys sorted) but sent with other bytes: sign exactly the bytes sent",
            Some(python_dumps(&sorted).into_bytes()),
        ),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (mistake, bytes) in variants {
        let Some(bytes) = bytes else { continue };
        // A variant that is the body itself, or one already listed, reproduces nothing new.
        if bytes != body && !out.iter().any(|(_, seen)| *seen == bytes) {
            out.push((mistake, bytes));
        }
    }
    out
}

/// Sorts every object's keys, recursively (maps keep insertion order in this build).
fn sort_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// `json.dumps` with its default separators (`, ` and `: `); keys in the order given.
fn python_dumps(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_dumps).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_dumps(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// HMAC-SHA256 of the string alone (the "not wrapped" mistake), lower-case hex.
fn bare_hmac_hex(secret: &str, inner: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(inner);
    hex::encode(mac.finalize().into_bytes())
}

fn timestamp_notes(timestamp: Option<&str>, now: Timestamp) -> Vec<String> {
    let Some(text) = timestamp else {
        return vec!["the request has no `timestamp` query parameter".to_owned()];
    };
    let Ok(value) = text.parse::<u64>() else {
        return vec![format!(
            "`timestamp` is `{text}`: TikTok wants whole Unix seconds (no fraction, no date text)"
        )];
    };
    let mut notes = Vec::new();
    if text.len() >= 13 {
        notes.push(format!(
            "`timestamp` {value} looks like milliseconds: TikTok wants Unix seconds"
        ));
        return notes;
    }
    let now = now.secs();
    if value == DOC_EXAMPLE_TIMESTAMP {
        notes.push(
            "`timestamp` is the example from TikTok's documentation: use the current time"
                .to_owned(),
        );
    }
    if value > now + TIMESTAMP_MAX_AHEAD_SECS {
        notes.push(format!(
            "`timestamp` is {} s in the future: check this machine's clock",
            value - now
        ));
    } else if now.saturating_sub(value) > TIMESTAMP_MAX_AGE_SECS {
        notes.push(format!(
            "`timestamp` is {} s old: TikTok accepts about 5 minutes; sign each request (and each retry) afresh",
            now - value
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use http::{HeaderMap, Method};

    const SECRET: &str = "e59af819cc";
    const KEY: &str = "29a39d";
    /// TikTok's documented vector: GET /authorization/202309/shops at 1623812664.
    const VECTOR_SIGN: &str = "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";
    const NOW: u64 = 1_700_000_000;

    fn creds() -> TiktokCredentials {
        TiktokCredentials {
            app_key: KEY.into(),
            app_secret: Secret::new(SECRET),
            shop_cipher: None,
        }
    }

    /// HMAC-SHA256 with the hmac crate directly: the reference, independent of the signer.
    fn hmac(key: &str, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(message.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn wrapped(inner: &str) -> String {
        hmac(SECRET, &format!("{SECRET}{inner}{SECRET}"))
    }

    fn request(method: Method, path_and_query: &str, content_type: Option<&str>) -> RequestHead {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        }
        RequestHead {
            method,
            authority: "open-api.tiktokglobalshop.com".into(),
            path_and_query: path_and_query.into(),
            headers,
        }
    }

    fn check(head: &RequestHead, body: &[u8], now: u64) -> Diagnosis {
        diagnose(&creds(), head, body, Timestamp::from_secs(now))
    }

    fn mistake_of(head: &RequestHead, body: &[u8]) -> String {
        let d = check(head, body, NOW);
        assert!(!d.valid, "{d:?}");
        d.mistake
            .clone()
            .unwrap_or_else(|| panic!("no mistake named: {d:?}"))
    }

    #[test]
    fn the_documented_vector_is_right_and_its_timestamp_is_flagged() {
        let q = format!(
            "/authorization/202309/shops?app_key={KEY}&timestamp=1623812664&sign={VECTOR_SIGN}"
        );
        let d = check(&request(Method::GET, &q, None), b"", 1_623_812_670);
        assert!(d.valid, "{d:?}");
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("example from TikTok's documentation")),
            "{d:?}"
        );
        let later = check(&request(Method::GET, &q, None), b"", NOW);
        assert!(
            later.valid && later.notes.iter().any(|n| n.contains("s old")),
            "{later:?}"
        );
    }

    #[test]
    fn each_known_mistake_is_named() {
        let ts = NOW;
        let base = format!("app_key{KEY}page_size20timestamp{ts}");
        let query =
            |sign: &str| format!("/api/x?page_size=20&app_key={KEY}&timestamp={ts}&sign={sign}");
        let get = |sign: &str| request(Method::GET, &query(sign), None);
        let inner = format!("/api/x{base}");

        assert!(check(&get(&wrapped(&inner)), b"", NOW).valid);
        assert!(mistake_of(&get(&wrapped(&inner).to_uppercase()), b"").contains("upper-case"));
        assert!(mistake_of(&get(&hmac(SECRET, &inner)), b"").contains("not wrapped"));
        assert!(mistake_of(&get(&wrapped(&base)), b"").contains("path is missing"));
        let unsorted = format!("/api/xpage_size20app_key{KEY}timestamp{ts}");
        assert!(mistake_of(&get(&wrapped(&unsorted)), b"").contains("order sent"));

        let with_token =
            format!("/api/x?page_size=20&access_token=TTP_x&app_key={KEY}&timestamp={ts}");
        let signed = wrapped(&format!(
            "/api/xaccess_tokenTTP_xapp_key{KEY}page_size20timestamp{ts}"
        ));
        let head = request(Method::GET, &format!("{with_token}&sign={signed}"), None);
        assert!(mistake_of(&head, b"").contains("`access_token`"));

        let encoded_q = format!("/api/x?page_token=abc%3D%3D&app_key={KEY}&timestamp={ts}");
        let signed = wrapped(&format!(
            "/api/xapp_key{KEY}page_tokenabc%3D%3Dtimestamp{ts}"
        ));
        let head = request(Method::GET, &format!("{encoded_q}&sign={signed}"), None);
        assert!(mistake_of(&head, b"").contains("percent-encoded"));

        let body = br#"{"a":1,"b":[1,2]}"#;
        let post = |sign: &str| request(Method::POST, &query(sign), Some("application/json"));
        assert!(
            check(
                &post(&wrapped(&format!(
                    "{inner}{}",
                    std::str::from_utf8(body).unwrap()
                ))),
                body,
                NOW
            )
            .valid
        );
        assert!(mistake_of(&post(&wrapped(&inner)), body).contains("body is missing"));
        let python = format!("{inner}{}", r#"{"a": 1, "b": [1, 2]}"#);
        assert!(mistake_of(&post(&wrapped(&python)), body).contains("json.dumps"));
        // Sent with its keys in one order, signed with them in another.
        let unsorted = br#"{"b":[1,2],"a":1}"#;
        let sorted = format!("{inner}{}", std::str::from_utf8(body).unwrap());
        assert!(mistake_of(&post(&wrapped(&sorted)), unsorted).contains("keys sorted"));
        // Python's json.dumps keeps the order sent: spaced, unsorted keys are reproduced as such.
        let spaced_unsorted = format!("{inner}{}", r#"{"b": [1, 2], "a": 1}"#);
        let mistake = mistake_of(&post(&wrapped(&spaced_unsorted)), unsorted);
        assert!(mistake.contains("json.dumps writes it"), "{mistake}");
        assert!(!mistake.contains("sort_keys"), "{mistake}");
        // And sort_keys=True is its own variant.
        let spaced_sorted = format!("{inner}{}", r#"{"a": 1, "b": [1, 2]}"#);
        let mistake = mistake_of(&post(&wrapped(&spaced_sorted)), unsorted);
        assert!(mistake.contains("sort_keys=True"), "{mistake}");
        // A compact body sent pretty-printed (JSON.stringify's output signed, then re-indented).
        let pretty = b"{\n  \"b\": [1, 2],\n  \"a\": 1\n}";
        let compact = format!("{inner}{}", std::str::from_utf8(unsorted).unwrap());
        assert!(mistake_of(&post(&wrapped(&compact)), pretty).contains("compact (`"));

        let multipart = "multipart/form-data; boundary=xyz";
        let part = b"--xyz\r\ncontent-disposition: form-data; name=\"f\"\r\n\r\nv\r\n--xyz--\r\n";
        let signed = wrapped(&format!("{inner}{}", std::str::from_utf8(part).unwrap()));
        let head = request(Method::POST, &query(&signed), Some(multipart));
        assert!(mistake_of(&head, part).contains("multipart"));
        let right = request(Method::POST, &query(&wrapped(&inner)), Some(multipart));
        assert!(check(&right, part, NOW).valid);
    }

    #[test]
    fn timestamps_in_milliseconds_the_future_or_another_app_are_flagged() {
        let ms = format!("/api/x?app_key={KEY}&timestamp=1700000000123&sign=00");
        let d = check(&request(Method::GET, &ms, None), b"", NOW);
        assert!(d.notes.iter().any(|n| n.contains("milliseconds")), "{d:?}");
        let future = format!("/api/x?app_key={KEY}&timestamp={}&sign=00", NOW + 3600);
        let d = check(&request(Method::GET, &future, None), b"", NOW);
        assert!(d.notes.iter().any(|n| n.contains("in the future")), "{d:?}");
        // TikTok refuses more than 30 s ahead (and the stand-in with it): so does the doctor.
        let ahead = format!("/api/x?app_key={KEY}&timestamp={}&sign=00", NOW + 31);
        let d = check(&request(Method::GET, &ahead, None), b"", NOW);
        assert!(
            d.notes.iter().any(|n| n.contains("31 s in the future")),
            "{d:?}"
        );
        let close = format!("/api/x?app_key={KEY}&timestamp={}&sign=00", NOW + 30);
        let d = check(&request(Method::GET, &close, None), b"", NOW);
        assert!(
            !d.notes.iter().any(|n| n.contains("in the future")),
            "{d:?}"
        );
        let other_app = format!("/api/x?app_key=other&timestamp={NOW}&sign=00");
        let d = check(&request(Method::GET, &other_app, None), b"", NOW);
        assert!(d.notes.iter().any(|n| n.contains("another app")), "{d:?}");
        let d = check(&request(Method::GET, "/api/x?app_key=k", None), b"", NOW);
        assert!(!d.valid && d.verdict.contains("no `sign`"), "{d:?}");
    }
}
