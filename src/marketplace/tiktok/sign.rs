//! TikTok Shop request signing (API 202309+): HMAC-SHA256 over path, sorted decoded query and the
//! exact body bytes, wrapped in the app secret. Pure.

use std::borrow::Cow;
use std::collections::HashSet;

use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, StatusCode};
use sha2::Sha256;

use crate::marketplace::{Sign, SignInput, TokenNeed};
use crate::secret::Secret;
use crate::signing::{media_type, RequestHead, SignError};

/// Query parameters the proxy owns: whatever the client sent under these names is replaced.
const OWNED_PARAMS: [&str; 3] = ["sign", "timestamp", "app_key"];
/// Never part of the string to sign (spec step 1).
const UNSIGNED_PARAMS: [&str; 2] = ["sign", "access_token"];
const ACCESS_TOKEN_HEADER: &str = "x-tts-access-token";
/// Up to this many query parameters, repeats are found by a scan (no hashing, no allocation).
const SCAN_LIMIT: usize = 16;

/// One TikTok Shop app's credentials.
#[derive(Debug, Clone)]
pub struct TiktokCredentials {
    pub app_key: String,
    pub app_secret: Secret,
    /// Added as `shop_cipher` when the request carries none.
    pub shop_cipher: Option<String>,
}

impl Sign for TiktokCredentials {
    fn scheme(&self) -> String {
        "TikTok Shop HMAC-SHA256".to_owned()
    }

    fn token_need(&self, head: &RequestHead) -> TokenNeed {
        if head.headers.contains_key(ACCESS_TOKEN_HEADER) {
            TokenNeed::None
        } else {
            TokenNeed::AccessToken
        }
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        sign(input, self, false).map(|(head, _)| head)
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        sign(input, self, true).map(|(_, explanation)| explanation.unwrap_or_default())
    }

    fn diagnose(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: crate::clock::Timestamp,
    ) -> Option<crate::marketplace::Diagnosis> {
        Some(super::doctor::diagnose(self, head, body, now))
    }

    /// 106001 (the `sign` is invalid), and 36009004 when its message is about the signature or
    /// the timestamp (the same code also covers unrelated mistakes).
    fn rejection(&self, _status: StatusCode, body: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            code: i64,
            #[serde(default)]
            message: String,
        }
        let envelope: Envelope = serde_json::from_slice(body).ok()?;
        let message = envelope.message.to_ascii_lowercase();
        let about_signing = message.contains("sign") || message.contains("timestamp");
        match envelope.code {
            106001 => Some("106001".to_owned()),
            36009004 if about_signing => Some("36009004".to_owned()),
            _ => None,
        }
    }
}

/// Signs as of `input.now`; `access_token` is sent as `x-tts-access-token` when the request has
/// no such header. The string to sign is built once; the explanation only when `explain`.
/// Parameters are borrowed from the request line wherever they need no decoding: this runs for
/// every request.
fn sign(
    input: SignInput<'_>,
    creds: &TiktokCredentials,
    explain: bool,
) -> Result<(RequestHead, Option<String>), SignError> {
    let SignInput {
        head: original,
        body,
        access_token,
        now,
    } = input;
    // HTTP/1.1 sends an empty path as `/`, and that is what the marketplace verifies.
    let path = match original.path() {
        "" => "/",
        path => path,
    };
    let raw_query = original.query().unwrap_or("");

    // The client's own parameters go on byte for byte (minus the ones we own), so that what we
    // sign is what the server will decode.
    let mut path_and_query = String::with_capacity(path.len() + raw_query.len() + 160);
    path_and_query.push_str(path);
    path_and_query.push('?');
    let mut params: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::with_capacity(8);
    // A scan of `params` for the usual handful of keys; past that a set: a scan made one request
    // line of ~50k distinct keys (well within hyper's head limit) cost minutes of CPU.
    let mut seen: Option<HashSet<Cow<'_, str>>> = None;
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = decode_pair(pair)?;
        if OWNED_PARAMS.contains(&key.as_ref()) {
            continue;
        }
        if seen.is_none() && params.len() >= SCAN_LIMIT {
            seen = Some(params.iter().map(|(k, _)| k.clone()).collect());
        }
        let repeated = match &mut seen {
            Some(set) => !set.insert(key.clone()),
            None => params.iter().any(|(k, _)| *k == key),
        };
        if repeated {
            return Err(SignError::BadRequest(format!(
                "query parameter `{key}` appears more than once; TikTok Shop's signature \
                 covers one value per key and its servers' handling of repeats is \
                 undocumented: send it once (for lists, join the values as the endpoint \
                 documents, usually with commas)"
            )));
        }
        path_and_query.push_str(pair);
        path_and_query.push('&');
        params.push((key, value));
    }

    let mut timestamp = [0u8; 20];
    let timestamp = decimal(now.secs(), &mut timestamp);
    let mut added: [Option<(&str, &str)>; 3] = [Some(("app_key", &creds.app_key)), None, None];
    if let Some(cipher) = &creds.shop_cipher {
        if !params.iter().any(|(k, _)| k == "shop_cipher") {
            added[1] = Some(("shop_cipher", cipher));
        }
    }
    added[2] = Some(("timestamp", timestamp));
    let added = added.into_iter().flatten();
    params.extend(
        added
            .clone()
            .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))),
    );

    let include_body = !is_multipart(&original.headers);
    // Sorted in place (keys are unique by now), so the string to sign needs no sorted copy.
    params.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let signed_params = params
        .iter()
        .filter(|(k, _)| !UNSIGNED_PARAMS.contains(&k.as_ref()));
    let string_to_sign = concat(path, signed_params, if include_body { body } else { &[] });
    let mut sign = [0u8; 64];
    let sign = hmac_hex_into(creds.app_secret.expose(), &string_to_sign, &mut sign);

    for (k, v) in added.chain([("sign", sign)]) {
        path_and_query.push_str(k);
        path_and_query.push('=');
        path_and_query.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        path_and_query.push('&');
    }
    path_and_query.pop();

    let mut head = RequestHead {
        method: original.method.clone(),
        authority: original.authority.clone(),
        path_and_query,
        headers: original.headers.clone(),
    };
    if let Some(token) = access_token {
        if !head.headers.contains_key(ACCESS_TOKEN_HEADER) {
            let value = HeaderValue::from_str(token.expose()).map_err(|_| {
                SignError::Failed(
                    "the profile's access_token contains characters not allowed in an HTTP \
                     header: check the configured token for stray quotes or newlines"
                        .to_owned(),
                )
            })?;
            head.headers
                .insert(HeaderName::from_static(ACCESS_TOKEN_HEADER), value);
        }
    }

    let explanation =
        explain.then(|| explanation(&string_to_sign, &params, body.len(), include_body));
    Ok((head, explanation))
}

/// `n` in decimal, written into `buf` (20 digits hold any u64).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

/// Multipart bodies are left out of the signature (spec step 3).
pub(super) fn is_multipart(headers: &http::HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "multipart/form-data")
}

/// Decodes one `key=value` pair the way the server does: `%XX` decoded, `+` is a space. A pair
/// that does not decode to UTF-8 is refused: how TikTok treats it is undocumented, and signing a
/// replacement character would be signing something other than what is sent.
fn decode_pair(pair: &str) -> Result<(Cow<'_, str>, Cow<'_, str>), SignError> {
    let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
    let key = decode_component(raw_key).map_err(|_| {
        SignError::BadRequest(format!(
            "query parameter `{raw_key}` does not percent-decode to UTF-8: TikTok Shop signs \
             decoded text, so encode the name as UTF-8 (e.g. `%C3%A9` for é)"
        ))
    })?;
    let value = decode_component(raw_value).map_err(|_| {
        SignError::BadRequest(format!(
            "the value of query parameter `{key}` does not percent-decode to UTF-8: TikTok Shop \
             signs decoded text, so encode it as UTF-8 (e.g. `%C3%A9` for é)"
        ))
    })?;
    Ok((key, value))
}

/// `+` as a space, then `%XX` decoded; borrowed when there is nothing to decode.
fn decode_component(raw: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|decoded| Cow::Owned(decoded.into_owned()))
    } else {
        percent_encoding::percent_decode_str(raw).decode_utf8()
    }
}

fn sorted_params<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Vec<&(K, V)> {
    let mut sorted: Vec<&(K, V)> = params
        .iter()
        .filter(|(k, _)| !UNSIGNED_PARAMS.contains(&k.as_ref()))
        .collect();
    // Byte-wise, as the spec demands: `str` ordering is byte ordering, not locale collation.
    sorted.sort_by(|a, b| a.0.as_ref().as_bytes().cmp(b.0.as_ref().as_bytes()));
    sorted
}

/// The string inside the secret wrapping: path, then `{key}{value}` sorted, then the body.
pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(
    path: &str,
    params: &[(K, V)],
    body: &[u8],
) -> Vec<u8> {
    concat(path, sorted_params(params), body)
}

/// Path, then `{key}{value}` in the order given, then the body: the string inside the wrapping.
/// The doctor also builds the wrong orders and filters through it.
pub(super) fn concat<'a, K: AsRef<str> + 'a, V: AsRef<str> + 'a>(
    path: &str,
    params: impl IntoIterator<Item = &'a (K, V)>,
    body: &[u8],
) -> Vec<u8> {
    let params = params.into_iter();
    let mut s = Vec::with_capacity(path.len() + body.len() + 64 * params.size_hint().0);
    s.extend_from_slice(path.as_bytes());
    for (k, v) in params {
        s.extend_from_slice(k.as_ref().as_bytes());
        s.extend_from_slice(v.as_ref().as_bytes());
    }
    s.extend_from_slice(body);
    s
}

/// Lowercase hex HMAC-SHA256 of `secret + string + secret`, keyed with `secret`.
pub fn hmac_hex(secret: &str, string_to_sign: &[u8]) -> String {
    let mut out = [0u8; 64];
    hmac_hex_into(secret, string_to_sign, &mut out).to_owned()
}

/// [`hmac_hex`] written into `out`, without allocating.
fn hmac_hex_into<'o>(secret: &str, string_to_sign: &[u8], out: &'o mut [u8; 64]) -> &'o str {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(secret.as_bytes());
    mac.update(string_to_sign);
    mac.update(secret.as_bytes());
    match hex::encode_to_slice(mac.finalize().into_bytes(), out) {
        Ok(()) => std::str::from_utf8(out).unwrap_or_default(),
        Err(_) => unreachable!("a SHA-256 MAC is 32 bytes, 64 in hex"),
    }
}

/// `inner` is the string to sign as built for the signature (with the body when signed).
fn explanation<K: AsRef<str>, V: AsRef<str>>(
    inner: &[u8],
    params: &[(K, V)],
    body_len: usize,
    include_body: bool,
) -> String {
    let mut out = String::from("TikTok Shop string to sign (app_secret masked):\n");
    out.push_str("<app_secret>");
    out.push_str(&String::from_utf8_lossy(inner));
    out.push_str("<app_secret>\n");
    let keys: Vec<&str> = sorted_params(params)
        .iter()
        .map(|(k, _)| k.as_ref())
        .collect();
    out.push_str(&format!(
        "signed params (byte-wise sorted, decoded): {}\n",
        keys.join(", ")
    ));
    out.push_str(&match (include_body, body_len) {
        (false, _) => "body: not signed (multipart/form-data)".to_owned(),
        (true, 0) => "body: empty".to_owned(),
        (true, n) => format!("body: {n} bytes, signed exactly as sent"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use http::{HeaderMap, Method};

    fn creds(secret: &str, key: &str) -> TiktokCredentials {
        TiktokCredentials {
            app_key: key.into(),
            app_secret: Secret::new(secret),
            shop_cipher: None,
        }
    }

    fn head(method: Method, pq: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        RequestHead {
            method,
            authority: "open-api.tiktokglobalshop.com".into(),
            path_and_query: pq.into(),
            headers: map,
        }
    }

    type Signed = crate::marketplace::Explained;

    /// Signs through the [`Sign`] trait (what the proxy and `sign` call), as of `now` seconds.
    fn sign(
        head: RequestHead,
        body: &[u8],
        creds: &TiktokCredentials,
        access_token: Option<&Secret>,
        now: u64,
    ) -> Result<Signed, SignError> {
        let input = SignInput {
            head: &head,
            body,
            access_token,
            now: Timestamp::from_secs(now),
        };
        crate::marketplace::sign_explained(creds, input)
    }

    fn query_param(signed: &Signed, key: &str) -> Option<String> {
        let q = signed.head.query().unwrap_or("");
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    fn sign_of(signed: &Signed) -> String {
        query_param(signed, "sign").unwrap()
    }

    const VECTOR_SIGN: &str = "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";

    #[test]
    fn official_vector() {
        let s = sign(
            head(Method::GET, "/authorization/202309/shops", &[]),
            b"",
            &creds("e59af819cc", "29a39d"),
            None,
            1623812664,
        )
        .unwrap();
        assert_eq!(
            s.head.path_and_query,
            format!("/authorization/202309/shops?app_key=29a39d&timestamp=1623812664&sign={VECTOR_SIGN}")
        );
        assert!(s.explanation.contains(
            "<app_secret>/authorization/202309/shopsapp_key29a39dtimestamp1623812664<app_secret>"
        ));
        assert!(!s.explanation.contains("e59af819cc"));
    }

    #[test]
    fn official_string_to_sign_is_wrapped_in_the_secret() {
        let params = vec![
            ("app_key".to_owned(), "29a39d".to_owned()),
            ("timestamp".to_owned(), "1623812664".to_owned()),
        ];
        let inner = string_to_sign("/authorization/202309/shops", &params, b"");
        assert_eq!(
            hmac_hex("e59af819cc", &inner),
            VECTOR_SIGN,
            "wrapped string: e59af819cc/authorization/202309/shopsapp_key29a39dtimestamp1623812664e59af819cc"
        );
        // Key only, no wrapping: a classic mistake that must not match.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"e59af819cc").unwrap();
        mac.update(&inner);
        assert_ne!(hex::encode(mac.finalize().into_bytes()), VECTOR_SIGN);
    }

    #[test]
    fn body_example_string_from_the_doc() {
        let body = br#"{"address":"https://partner.tiktokshop.com","event_type":"PACKAGE_UPDATE"}"#;
        let mut c = creds("secret", "68xu9ks5p4i8");
        c.shop_cipher = Some("ROW_xkMbgAAAeVAQra0eZWebFQq5aIK".into());
        let s = sign(
            head(
                Method::POST,
                "/event/202309/webhooks",
                &[("content-type", "application/json")],
            ),
            body,
            &c,
            None,
            1696909648,
        )
        .unwrap();
        let expected = "/event/202309/webhooksapp_key68xu9ks5p4i8shop_cipherROW_xkMbgAAAeVAQra0eZWebFQq5aIKtimestamp1696909648{\"address\":\"https://partner.tiktokshop.com\",\"event_type\":\"PACKAGE_UPDATE\"}";
        assert!(s
            .explanation
            .contains(&format!("<app_secret>{expected}<app_secret>")));
        assert_eq!(sign_of(&s), hmac_hex("secret", expected.as_bytes()));
    }

    #[test]
    fn access_token_and_client_sign_are_never_signed() {
        let with = sign(
            head(
                Method::GET,
                "/authorization/202309/shops?access_token=TTP_x&sign=deadbeef",
                &[],
            ),
            b"",
            &creds("e59af819cc", "29a39d"),
            None,
            1623812664,
        )
        .unwrap();
        assert_eq!(sign_of(&with), VECTOR_SIGN);
        // The client's stale sign is gone; exactly one sign remains.
        assert_eq!(with.head.query().unwrap().matches("sign=").count(), 1);
    }

    #[test]
    fn path_is_part_of_the_signature() {
        let a = sign(
            head(Method::GET, "/a/202309/x", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        let b = sign(
            head(Method::GET, "/b/202309/x", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_ne!(sign_of(&a), sign_of(&b));
    }

    #[test]
    fn body_bytes_are_signed_exactly() {
        let h = || head(Method::POST, "/p", &[("content-type", "application/json")]);
        let a = sign(h(), br#"{"a": 1}"#, &creds("s", "k"), None, 1).unwrap();
        let b = sign(h(), br#"{"a":1}"#, &creds("s", "k"), None, 1).unwrap();
        let empty = sign(h(), b"", &creds("s", "k"), None, 1).unwrap();
        assert_ne!(
            sign_of(&a),
            sign_of(&b),
            "whitespace must change the signature"
        );
        assert_ne!(
            sign_of(&a),
            sign_of(&empty),
            "the body must not be omitted on POST"
        );
        assert_eq!(
            sign_of(&a),
            hmac_hex("s", b"/papp_keyktimestamp1{\"a\": 1}"),
            "body appended after the params"
        );
    }

    #[test]
    fn timestamp_is_seconds_and_replaces_the_clients_stale_one() {
        let s = sign(
            head(Method::GET, "/p?timestamp=1600000000000&app_key=wrong", &[]),
            b"",
            &creds("s", "k"),
            None,
            1700000000,
        )
        .unwrap();
        assert_eq!(query_param(&s, "timestamp").as_deref(), Some("1700000000"));
        assert_eq!(query_param(&s, "app_key").as_deref(), Some("k"));
        assert_eq!(s.head.query().unwrap().matches("timestamp=").count(), 1);
        assert_eq!(s.head.query().unwrap().matches("app_key=").count(), 1);
        assert_eq!(sign_of(&s), hmac_hex("s", b"/papp_keyktimestamp1700000000"));
    }

    #[test]
    fn sign_is_lowercase_hex() {
        let s = sign(head(Method::GET, "/p", &[]), b"", &creds("s", "k"), None, 1).unwrap();
        let sig = sign_of(&s);
        assert_eq!(sig.len(), 64);
        assert!(sig
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn values_are_signed_decoded() {
        let s = sign(
            head(Method::GET, "/p?page_token=abc%3D%3D&q=a+b%20c", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(
            sign_of(&s),
            hmac_hex("s", b"/papp_keykpage_tokenabc==qa b ctimestamp1")
        );
        // ... while the wire keeps the client's encoding untouched.
        assert!(s
            .head
            .path_and_query
            .starts_with("/p?page_token=abc%3D%3D&q=a+b%20c&"));
    }

    #[test]
    fn keys_sort_byte_wise_not_by_insertion_or_locale() {
        // Byte order puts "Z" before "a" and "_" after upper-case letters; locale collation would not.
        let s = sign(
            head(Method::GET, "/p?b=1&a=2&Z=3&a_b=4&aB=5", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(
            sign_of(&s),
            hmac_hex("s", b"/pZ3a2aB5a_b4app_keykb1timestamp1")
        );
    }

    #[test]
    fn empty_values_keep_their_key() {
        let s = sign(
            head(Method::GET, "/p?e=&f", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(sign_of(&s), hmac_hex("s", b"/papp_keykeftimestamp1"));
    }

    #[test]
    fn multipart_body_is_excluded_by_media_type_even_with_boundary() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nhi\r\n--xyz--\r\n";
        let s = sign(
            head(
                Method::POST,
                "/p",
                &[("content-type", "multipart/form-data; boundary=xyz")],
            ),
            body,
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(sign_of(&s), hmac_hex("s", b"/papp_keyktimestamp1"));
        // A JSON body with the same bytes is signed.
        let j = sign(
            head(Method::POST, "/p", &[("content-type", "application/json")]),
            body,
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_ne!(sign_of(&j), sign_of(&s));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = sign(
            head(Method::GET, "/p?ids=1&ids=2", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap_err();
        match err {
            SignError::BadRequest(m) => assert!(m.contains("`ids` appears more than once"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Repeats are found whether the query is short (scanned) or long (hashed), wherever the
    /// first and second copies stand.
    #[test]
    fn duplicate_keys_are_refused_in_long_queries_too() {
        for (first, second) in [(3, 30), (20, 31), (0, 16), (15, 16)] {
            let mut keys: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
            keys[second] = format!("k{first}=again");
            let path = format!("/p?{}", keys.join("&"));
            let err = sign(
                head(Method::GET, &path, &[]),
                b"",
                &creds("s", "k"),
                None,
                1,
            );
            match err {
                Err(SignError::BadRequest(m)) => {
                    assert!(
                        m.contains(&format!("`k{first}` appears more than once")),
                        "{m}"
                    )
                }
                other => panic!("{first}/{second}: unexpected {other:?}"),
            }
        }
        let distinct: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let path = format!("/p?{}", distinct.join("&"));
        assert!(sign(
            head(Method::GET, &path, &[]),
            b"",
            &creds("s", "k"),
            None,
            1
        )
        .is_ok());
    }

    #[test]
    fn shop_cipher_and_token_added_only_when_absent() {
        let mut c = creds("s", "k");
        c.shop_cipher = Some("ROW_profile".into());
        let token = Secret::new("TTP_profile_token");
        let s = sign(head(Method::GET, "/p", &[]), b"", &c, Some(&token), 1).unwrap();
        assert_eq!(
            query_param(&s, "shop_cipher").as_deref(),
            Some("ROW_profile")
        );
        assert_eq!(s.head.headers["x-tts-access-token"], "TTP_profile_token");
        assert_eq!(
            sign_of(&s),
            hmac_hex("s", b"/papp_keykshop_cipherROW_profiletimestamp1")
        );
        assert!(!s.explanation.contains("TTP_profile_token"));

        let own = sign(
            head(
                Method::GET,
                "/p?shop_cipher=ROW_own",
                &[("x-tts-access-token", "TTP_own")],
            ),
            b"",
            &c,
            Some(&token),
            1,
        )
        .unwrap();
        assert_eq!(query_param(&own, "shop_cipher").as_deref(), Some("ROW_own"));
        assert_eq!(own.head.headers["x-tts-access-token"], "TTP_own");
        assert_eq!(own.head.query().unwrap().matches("shop_cipher=").count(), 1);
    }

    #[test]
    fn many_distinct_keys_sign_in_linear_time() {
        // Quadratic duplicate detection took minutes here; linear takes milliseconds.
        let query: Vec<String> = (0..50_000).map(|i| format!("k{i}=v")).collect();
        let started = std::time::Instant::now();
        let s = sign(
            head(Method::GET, &format!("/p?{}", query.join("&")), &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert!(s.head.query().unwrap().starts_with("k0=v&k1=v&"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn each_timestamp_gives_a_fresh_signature() {
        let a = sign(
            head(Method::GET, "/p", &[]),
            b"",
            &creds("s", "k"),
            None,
            100,
        )
        .unwrap();
        let b = sign(
            head(Method::GET, "/p", &[]),
            b"",
            &creds("s", "k"),
            None,
            101,
        )
        .unwrap();
        assert_ne!(sign_of(&a), sign_of(&b));
    }

    #[test]
    fn mismatched_credentials_change_the_signature() {
        let a = sign(
            head(Method::GET, "/p", &[]),
            b"",
            &creds("sandbox", "k"),
            None,
            1,
        )
        .unwrap();
        let b = sign(
            head(Method::GET, "/p", &[]),
            b"",
            &creds("prod", "k"),
            None,
            1,
        )
        .unwrap();
        assert_ne!(sign_of(&a), sign_of(&b));
    }

    /// `https://host?page_size=20` goes out as `GET /?page_size=20`: the signature must cover `/`.
    #[test]
    fn an_empty_path_is_signed_as_slash() {
        let s = sign(
            head(Method::GET, "?page_size=20", &[]),
            b"",
            &creds("secret", "key"),
            None,
            7,
        )
        .unwrap();
        assert!(
            s.head.path_and_query.starts_with("/?page_size=20&"),
            "{}",
            s.head.path_and_query
        );
        let inner = "/app_keykeypage_size20timestamp7";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(format!("secret{inner}secret").as_bytes());
        assert_eq!(sign_of(&s), hex::encode(mac.finalize().into_bytes()));
        assert!(
            s.explanation.contains("<app_secret>/app_key"),
            "{}",
            s.explanation
        );
    }

    #[test]
    fn signature_rejections_are_recognised_and_nothing_else() {
        let c = creds("s", "k");
        let status = StatusCode::UNAUTHORIZED;
        let answer = |code: i64, message: &str| {
            format!(r#"{{"code":{code},"message":"{message}","request_id":"r","data":null}}"#)
        };
        assert_eq!(
            c.rejection(status, answer(106001, "Invalid credentials").as_bytes()),
            Some("106001".to_owned())
        );
        assert_eq!(
            c.rejection(status, answer(36009004, "Invalid timestamp").as_bytes()),
            Some("36009004".to_owned())
        );
        assert_eq!(
            c.rejection(status, answer(36009004, "Unexpected identifier").as_bytes()),
            None
        );
        assert_eq!(
            c.rejection(status, answer(105002, "access token expired").as_bytes()),
            None
        );
        assert_eq!(c.rejection(status, b"<html>"), None);
    }

    /// `check` prints this name; nothing else in the request path reads it, so only this pins it.
    #[test]
    fn scheme_names_the_algorithm() {
        assert_eq!(creds("s", "k").scheme(), "TikTok Shop HMAC-SHA256");
    }

    /// The proxy fetches (and may refresh) a managed token only on `AccessToken`: a client's own
    /// header must not trigger that, and any other header must not suppress it.
    #[test]
    fn token_need_yields_to_the_clients_own_header_only() {
        let need = |headers: &[(&str, &str)]| {
            creds("s", "k").token_need(&head(Method::GET, "/p", headers))
        };
        assert_eq!(need(&[]), TokenNeed::AccessToken);
        assert_eq!(
            need(&[("authorization", "Bearer x")]),
            TokenNeed::AccessToken
        );
        assert_eq!(need(&[("x-tts-access-token", "TTP_own")]), TokenNeed::None);
    }

    /// `%C3` alone is not UTF-8: refused with the parameter's name rather than signed as U+FFFD.
    #[test]
    fn a_query_that_is_not_utf8_is_refused_naming_the_parameter() {
        for (query, named) in [
            ("/p?a=%C3", "`a`"),
            ("/p?%FFkey=1", "`%FFkey`"),
            ("/p?ok=1&b=%E2%82", "`b`"),
        ] {
            let e = sign(
                head(Method::GET, query, &[]),
                b"",
                &creds("s", "k"),
                None,
                1,
            )
            .unwrap_err();
            assert!(matches!(e, SignError::BadRequest(_)), "{query}");
            assert!(e.to_string().contains(named), "{query}: {e}");
        }
        // Valid multi-byte UTF-8 still signs, decoded.
        let s = sign(
            head(Method::GET, "/p?n=%C3%A9", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert!(s.explanation.contains("n\u{e9}"), "{}", s.explanation);
    }
}
