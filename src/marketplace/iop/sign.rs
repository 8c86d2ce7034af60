//! IOP request signing: HMAC-SHA256, keyed with the app secret, over the API prefix and the
//! decoded query, form-body and multipart text parameters sorted byte-wise as `{name}{value}`,
//! printed as upper-case hex. The system parameters (`app_key`, `timestamp` in ms,
//! `sign_method`, the access token and `sign`) go in the query; the body is forwarded as
//! received. Pure.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Once;

use hmac::{Hmac, Mac};
use http::StatusCode;
use sha2::Sha256;

use super::multipart;
use super::IopPolicy;
use crate::marketplace::{Diagnosis, Sign, SignInput, TokenNeed};
use crate::secret::Secret;
use crate::signing::{media_type, RequestHead, SignError};

/// The parameters the proxy owns in the query: client copies are dropped and its own are set.
const OWNED_PARAMS: [&str; 4] = ["app_key", "timestamp", "sign_method", "sign"];
/// The names an access token travels under: `access_token`, or `session` as the 2022 Python
/// SDK sends it. The proxy injects under the name the client used.
pub const TOKEN_NAMES: [&str; 2] = ["access_token", "session"];
/// Parameters whose values are secrets wherever they are shown (explanations, the doctor): the
/// tokens, and what the token endpoints take (a refresh token, an authorization code).
pub const SECRET_PARAMS: [&str; 4] = ["access_token", "session", "refresh_token", "code"];
const DEFAULT_TOKEN_NAME: &str = "access_token";
/// The token endpoints take no access token.
const AUTH_PREFIX: &str = "/auth/token/";

/// Empty values are skipped as the Java SDK does; the gateway's rule is undocumented, so say
/// so once per process rather than on every request.
static EMPTY_VALUE_WARNING: Once = Once::new();

/// One app's credentials on the IOP gateway.
#[derive(Debug, Clone)]
pub struct IopCredentials {
    pub policy: &'static IopPolicy,
    pub app_key: String,
    pub app_secret: Secret,
}

impl Sign for IopCredentials {
    fn scheme(&self) -> String {
        format!("{} IOP HMAC-SHA256", self.policy.display)
    }

    fn token_need(&self, head: &RequestHead) -> TokenNeed {
        match api_prefix(self.policy, head.path()) {
            Ok(prefix) if prefix.starts_with(AUTH_PREFIX) => TokenNeed::None,
            _ => TokenNeed::AccessToken,
        }
    }

    fn sign(&self, input: SignInput<'_>) -> Result<RequestHead, SignError> {
        sign(input, self, false).map(|(head, _)| head)
    }

    fn explain(&self, input: SignInput<'_>) -> Result<String, SignError> {
        sign(input, self, true).map(|(_, explanation)| explanation.unwrap_or_default())
    }

    fn rejection(&self, _status: StatusCode, body: &[u8]) -> Option<String> {
        (envelope_code(body)? == "IncompleteSignature").then(|| "IncompleteSignature".to_owned())
    }

    fn diagnose(
        &self,
        head: &RequestHead,
        body: &[u8],
        now: crate::clock::Timestamp,
    ) -> Option<Diagnosis> {
        Some(super::doctor::diagnose(self, head, body, now))
    }
}

/// The `code` of an IOP envelope (`"0"` on success), if `body` is one.
pub fn envelope_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("code")? {
        serde_json::Value::String(code) => Some(code.clone()),
        serde_json::Value::Number(code) => Some(code.to_string()),
        _ => None,
    }
}

/// The API name that prefixes the string to sign: `/rest/order/get` → `/order/get`; `/sync`
/// (where the policy serves it) → none. Other paths are not IOP calls.
pub fn api_prefix<'p>(policy: &IopPolicy, path: &'p str) -> Result<&'p str, SignError> {
    if let Some(api) = path.strip_prefix("/rest") {
        if api.len() > 1 && api.starts_with('/') {
            return Ok(api);
        }
    }
    if policy.sync_without_prefix && path == "/sync" {
        return Ok("");
    }
    let sync = if policy.sync_without_prefix {
        " or /sync (API name in `method`)"
    } else {
        ""
    };
    Err(SignError::BadRequest(format!(
        "`{path}` is not an API path of the {} gateway: call /rest/<api>{sync}",
        policy.display
    )))
}

/// The string to sign: `prefix`, then `{name}{value}` sorted byte-wise by name, `sign` and
/// empty values left out.
pub fn base_string<K: AsRef<str>, V: AsRef<str>>(prefix: &str, params: &[(K, V)]) -> Vec<u8> {
    let mut sorted: Vec<&(K, V)> = params
        .iter()
        .filter(|(k, v)| k.as_ref() != "sign" && !v.as_ref().is_empty())
        .collect();
    // Byte-wise: `str` ordering is byte ordering, not locale collation.
    sorted.sort_by(|a, b| a.0.as_ref().as_bytes().cmp(b.0.as_ref().as_bytes()));
    let mut s = Vec::with_capacity(prefix.len() + 32 * sorted.len());
    s.extend_from_slice(prefix.as_bytes());
    for (k, v) in sorted {
        s.extend_from_slice(k.as_ref().as_bytes());
        s.extend_from_slice(v.as_ref().as_bytes());
    }
    s
}

/// Upper-case hex HMAC-SHA256 of `base`, keyed with `secret`.
pub fn hmac_upper_hex(secret: &str, base: &[u8]) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(base);
    hex::encode_upper(mac.finalize().into_bytes())
}

/// Where a parameter came from, for messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Query,
    Form,
    Multipart,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Query => "query",
            Origin::Form => "form body",
            Origin::Multipart => "multipart text part",
        }
    }
}

/// Signs as of `input.now`. The client's query pairs are kept as sent (minus those the proxy
/// owns); the body is never touched.
fn sign(
    input: SignInput<'_>,
    creds: &IopCredentials,
    explain: bool,
) -> Result<(RequestHead, Option<String>), SignError> {
    let SignInput {
        head: original,
        body,
        access_token,
        now,
    } = input;
    let path = match original.path() {
        "" => "/",
        path => path,
    };
    let prefix = api_prefix(creds.policy, path)?;
    let is_auth = prefix.starts_with(AUTH_PREFIX);
    let display = creds.policy.display;

    let raw_query = original.query().unwrap_or("");
    let mut path_and_query = String::with_capacity(path.len() + raw_query.len() + 200);
    path_and_query.push_str(path);
    path_and_query.push('?');
    let mut params: Vec<(Cow<'_, str>, Cow<'_, str>, Origin)> = Vec::with_capacity(16);
    let mut client_token: Option<(&'static str, Cow<'_, str>)> = None;
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = decode_pair(pair, "query parameter", display)?;
        if OWNED_PARAMS.contains(&key.as_ref()) {
            continue;
        }
        if let Some(name) = TOKEN_NAMES.iter().find(|n| **n == key) {
            if client_token.is_some() {
                return Err(SignError::BadRequest(format!(
                    "the query carries the access token twice (`{name}`): send it once, as \
                     `access_token` or `session`"
                )));
            }
            client_token = Some((name, value));
            continue;
        }
        path_and_query.push_str(pair);
        path_and_query.push('&');
        params.push((key, value, Origin::Query));
    }

    match media_type(&original.headers).as_deref() {
        Some("application/x-www-form-urlencoded") => {
            let text = std::str::from_utf8(body).map_err(|_| {
                SignError::BadRequest(format!(
                    "the form body is not UTF-8 text: {display} signs decoded text, so \
                     percent-encode it as UTF-8"
                ))
            })?;
            for pair in text.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = decode_pair(pair, "form field", display)?;
                params.push((key, value, Origin::Form));
            }
        }
        Some("multipart/form-data") => {
            let content_type = original
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let boundary = multipart::boundary(content_type).ok_or_else(|| {
                SignError::BadRequest(
                    "the multipart/form-data content-type has no boundary parameter".to_owned(),
                )
            })?;
            let parts = multipart::parse(body, &boundary).map_err(|reason| {
                SignError::BadRequest(format!(
                    "the multipart body cannot be read ({reason}): {display} signs its text \
                     fields, so it must be well-formed multipart/form-data"
                ))
            })?;
            for part in parts.into_iter().filter(|p| !p.is_file) {
                let value = std::str::from_utf8(part.value).map_err(|_| {
                    SignError::BadRequest(format!(
                        "multipart text field `{}` is not UTF-8: {display} signs text fields; \
                         send bytes as a file part (with a filename)",
                        part.name
                    ))
                })?;
                params.push((
                    Cow::Owned(part.name),
                    Cow::Owned(value.to_owned()),
                    Origin::Multipart,
                ));
            }
        }
        _ => {}
    }

    // A body that carries a system parameter would be signed one way and read another: the
    // proxy never edits a body, so the client must.
    if let Some((key, _, origin)) = params.iter().find(|(k, _, o)| {
        *o != Origin::Query
            && (OWNED_PARAMS.contains(&k.as_ref()) || TOKEN_NAMES.contains(&k.as_ref()))
    }) {
        return Err(SignError::BadRequest(format!(
            "the {} carries `{key}`, a parameter signproxy sets: remove it from the body \
             (signproxy adds app_key, timestamp, sign_method, the access token and sign to \
             the query, and never alters a body)",
            origin.name()
        )));
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(params.len());
    for (key, _, origin) in &params {
        if !seen.insert(key.as_ref()) {
            return Err(SignError::BadRequest(format!(
                "parameter `{key}` appears more than once (last in the {}); the {display} \
                 signature covers one value per name and the gateway's handling of repeats is \
                 undocumented: send it once (for lists, the API's documented form, usually a \
                 JSON array or commas)",
                origin.name()
            )));
        }
    }
    if creds.policy.sync_without_prefix
        && prefix.is_empty()
        && !params
            .iter()
            .any(|(k, v, _)| k == "method" && !v.is_empty())
    {
        return Err(SignError::BadRequest(format!(
            "a {display} /sync call names its API in the `method` parameter, and this one has none"
        )));
    }

    let timestamp = now.millis().to_string();
    let token: Option<(&str, &str)> = if is_auth {
        None
    } else {
        let name = client_token.as_ref().map_or(DEFAULT_TOKEN_NAME, |(n, _)| n);
        match (access_token, &client_token) {
            (Some(profile), _) => Some((name, profile.expose())),
            (None, Some((name, own))) => Some((name, own.as_ref())),
            (None, None) => None,
        }
    };
    let mut added: Vec<(&str, &str)> = vec![
        ("app_key", creds.app_key.as_str()),
        ("sign_method", "sha256"),
        ("timestamp", &timestamp),
    ];
    added.extend(token);

    let mut signed: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v, _)| (k.as_ref(), v.as_ref()))
        .chain(added.iter().copied())
        .collect();
    if let Some((name, _)) = signed.iter().find(|(_, v)| v.is_empty()) {
        let name = name.to_string();
        EMPTY_VALUE_WARNING.call_once(|| {
            tracing::warn!(
                parameter = %name,
                "an empty-valued parameter is left out of the IOP signature, as the official Java \
                 SDK does (the gateway's rule is undocumented): if the gateway answers \
                 IncompleteSignature, drop empty parameters from the request"
            );
        });
    }
    let base = base_string(prefix, &signed);
    let sign = hmac_upper_hex(creds.app_secret.expose(), &base);

    for (k, v) in added.iter().chain([("sign", sign.as_str())].iter()) {
        path_and_query.push_str(k);
        path_and_query.push('=');
        path_and_query.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        path_and_query.push('&');
    }
    path_and_query.pop();

    let explanation = explain.then(|| {
        // Tokens and codes are secrets: shown by name only.
        for pair in signed.iter_mut() {
            if SECRET_PARAMS.contains(&pair.0) && !pair.1.is_empty() {
                pair.1 = masked(pair.0);
            }
        }
        let shown = base_string(prefix, &signed);
        let from_body = params.iter().filter(|(_, _, o)| *o != Origin::Query).count();
        format!(
            "string to sign: {}\nsign = upper-case hex HMAC-SHA256(key <app_secret>, string to sign)\n\
             ({from_body} parameter(s) from the body are signed; the body is forwarded unchanged; \
             empty values are left out)",
            String::from_utf8_lossy(&shown)
        )
    });
    Ok((
        RequestHead {
            method: original.method.clone(),
            authority: original.authority.clone(),
            path_and_query,
            headers: original.headers.clone(),
        },
        explanation,
    ))
}

/// Decodes one `name=value` pair as the gateway does (`%XX`, `+` is a space). A pair that does
/// not decode to UTF-8 is refused: signing a replacement character would sign something else.
fn decode_pair<'a>(
    pair: &'a str,
    what: &str,
    display: &str,
) -> Result<(Cow<'a, str>, Cow<'a, str>), SignError> {
    let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
    let bad = |name: &str| {
        SignError::BadRequest(format!(
            "{what} `{name}` does not percent-decode to UTF-8: {display} signs decoded text, so \
             encode it as UTF-8 (e.g. `%C3%A9` for é)"
        ))
    };
    let key = decode_component(raw_key).map_err(|_| bad(raw_key))?;
    let value = decode_component(raw_value).map_err(|_| bad(&key))?;
    Ok((key, value))
}

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

/// How a secret parameter's value is shown: `<access_token>`, `<refresh_token>`, `<code>`.
pub fn masked(name: &str) -> &'static str {
    match name {
        "refresh_token" => "<refresh_token>",
        "code" => "<code>",
        _ => "<access_token>",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use http::{HeaderMap, Method};

    pub static POLICY: IopPolicy = IopPolicy {
        id: "iop-test",
        display: "Test",
        sync_without_prefix: true,
        refresh_url: "https://auth.example.test/rest/auth/token/refresh",
        token_host: "auth.example.test",
        refresh_expiry_carries_over: true,
        consent_hint: "authorize again",
    };
    static NO_SYNC: IopPolicy = IopPolicy {
        sync_without_prefix: false,
        ..POLICY
    };

    const VECTOR_SIGN: &str = "4190D32361CFB9581350222F345CB77F3B19F0E31D162316848A2C1FFD5FAB4A";

    pub fn creds(secret: &str, key: &str) -> IopCredentials {
        IopCredentials {
            policy: &POLICY,
            app_key: key.into(),
            app_secret: Secret::new(secret),
        }
    }

    pub fn head(method: Method, pq: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        RequestHead {
            method,
            authority: "api.example.test".into(),
            path_and_query: pq.into(),
            headers: h,
        }
    }

    #[derive(Debug)]
    struct Signed {
        head: RequestHead,
        explanation: String,
    }

    fn run(
        head: RequestHead,
        body: &[u8],
        c: &IopCredentials,
        token: Option<&Secret>,
        millis: u64,
    ) -> Result<Signed, SignError> {
        let input = SignInput {
            head: &head,
            body,
            access_token: token,
            now: Timestamp::from_millis(millis),
        };
        let (head, explanation) = sign(input, c, true)?;
        Ok(Signed {
            head,
            explanation: explanation.unwrap_or_default(),
        })
    }

    fn query_pairs(s: &Signed) -> Vec<(String, String)> {
        form_urlencoded::parse(s.head.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    fn param(s: &Signed, key: &str) -> Option<String> {
        query_pairs(s)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn sign_of(s: &Signed) -> String {
        param(s, "sign").unwrap()
    }

    fn form() -> [(&'static str, &'static str); 1] {
        [("content-type", "application/x-www-form-urlencoded")]
    }

    #[test]
    fn official_vector_is_reproduced() {
        let token = Secret::new("test");
        let s = run(
            head(Method::GET, "/rest/order/get?order_id=1234", &[]),
            b"",
            &creds("helloworld", "123456"),
            Some(&token),
            1517820392000,
        )
        .unwrap();
        assert_eq!(sign_of(&s), VECTOR_SIGN);
        assert_eq!(
            s.head.path_and_query,
            format!("/rest/order/get?order_id=1234&app_key=123456&sign_method=sha256&timestamp=1517820392000&access_token=test&sign={VECTOR_SIGN}")
        );
        assert!(
            s.explanation.contains(
                "/order/getaccess_token<access_token>app_key123456order_id1234sign_methodsha256timestamp1517820392000"
            ),
            "{}",
            s.explanation
        );
        assert!(!s.explanation.contains("helloworld"));
        let base = b"/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000";
        assert_eq!(hmac_upper_hex("helloworld", base), VECTOR_SIGN);
    }

    #[test]
    fn doc_base_string_sorts_byte_wise() {
        let params = [
            ("foo", "1"),
            ("bar", "2"),
            ("foo_bar", "3"),
            ("foobar", "4"),
        ];
        assert_eq!(
            base_string("/test/api", &params),
            b"/test/apibar2foo1foo_bar3foobar4".to_vec()
        );
        // Byte order puts `Z` before `_` before `a`; case-insensitive or locale collation
        // (`a`, `_b`, `Z` or `_b`, `a`, `Z`) signs something else.
        let s = run(
            head(Method::GET, "/rest/p?a=2&_b=3&Z=1", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        let byte_order = hmac_upper_hex("s", b"/pZ1_b3a2app_keyksign_methodsha256timestamp1");
        assert_eq!(sign_of(&s), byte_order);
        for other in [
            "/pa2app_keyk_b3sign_methodsha256timestamp1Z1",
            "/p_b3a2app_keyksign_methodsha256timestamp1Z1",
        ] {
            assert_ne!(hmac_upper_hex("s", other.as_bytes()), byte_order, "{other}");
        }
    }

    /// The vector's base string with one rule broken each time: every variant must sign
    /// differently, so a signer that made any of these mistakes could not pass the vector test.
    #[test]
    fn each_rule_broken_gives_another_sign() {
        let good = hmac_upper_hex(
            "helloworld",
            b"/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000",
        );
        assert_eq!(good, VECTOR_SIGN);
        let variants: [(&str, String); 7] = [
            ("lowercase hex", VECTOR_SIGN.to_ascii_lowercase()),
            (
                "seconds timestamp",
                hmac_upper_hex("helloworld", b"/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392"),
            ),
            (
                "/rest in the prefix",
                hmac_upper_hex("helloworld", b"/rest/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000"),
            ),
            (
                "sign sorted in",
                hmac_upper_hex("helloworld", b"/order/getaccess_tokentestapp_key123456order_id1234signXsign_methodsha256timestamp1517820392000"),
            ),
            (
                "insertion order",
                hmac_upper_hex("helloworld", b"/order/getapp_key123456access_tokentestorder_id1234sign_methodsha256timestamp1517820392000"),
            ),
            (
                "plain SHA-256",
                {
                    use sha2::Digest;
                    hex::encode_upper(Sha256::digest(b"/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000"))
                },
            ),
            (
                "no prefix",
                hmac_upper_hex("helloworld", b"access_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000"),
            ),
        ];
        for (mistake, sign) in variants {
            assert_ne!(sign, VECTOR_SIGN, "{mistake}");
        }
        // `sign` itself is never signed, whatever the client sent.
        let a = run(
            head(Method::GET, "/rest/order/get?order_id=1234&sign=abc", &[]),
            b"",
            &creds("helloworld", "123456"),
            Some(&Secret::new("test")),
            1517820392000,
        )
        .unwrap();
        assert_eq!(sign_of(&a), VECTOR_SIGN);
    }

    #[test]
    fn sign_is_uppercase_hex_and_timestamp_milliseconds() {
        let s = run(
            head(Method::GET, "/rest/a/b", &[]),
            b"",
            &creds("s", "k"),
            None,
            1_700_000_000_123,
        )
        .unwrap();
        let sig = sign_of(&s);
        assert_eq!(sig.len(), 64);
        assert!(
            sig.chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
            "{sig}"
        );
        assert_eq!(param(&s, "timestamp").as_deref(), Some("1700000000123"));
        assert_eq!(
            sig,
            hmac_upper_hex("s", b"/a/bapp_keyksign_methodsha256timestamp1700000000123")
        );
        // Lower-case hex is a different string: the gateway compares text.
        assert_ne!(sig, sig.to_ascii_lowercase());
    }

    #[test]
    fn sync_signs_without_prefix_and_rest_strips_rest() {
        let body =
            b"method=aliexpress.solution.product.schema.get&aliexpress_category_id=200135143";
        let s = run(
            head(Method::POST, "/sync", &form()),
            body,
            &creds("s", "k"),
            Some(&Secret::new("AT")),
            5,
        )
        .unwrap();
        let expected = "access_tokenATaliexpress_category_id200135143app_keykmethodaliexpress.solution.product.schema.getsign_methodsha256timestamp5";
        assert_eq!(sign_of(&s), hmac_upper_hex("s", expected.as_bytes()));
        assert_ne!(
            sign_of(&s),
            hmac_upper_hex("s", format!("/sync{expected}").as_bytes()),
            "prefix on /sync"
        );
        // Where the policy serves no /sync, it is not an API path.
        let c = IopCredentials {
            policy: &NO_SYNC,
            ..creds("s", "k")
        };
        assert!(matches!(
            run(head(Method::POST, "/sync", &form()), body, &c, None, 5),
            Err(SignError::BadRequest(_))
        ));
        // /sync without `method` names what is missing.
        let e = run(
            head(Method::POST, "/sync", &form()),
            b"a=1",
            &creds("s", "k"),
            None,
            5,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`method`"), "{e}");
        for bad in ["/", "/rest", "/rest/", "/order/get", "/sync/x"] {
            let e = run(head(Method::GET, bad, &[]), b"", &creds("s", "k"), None, 5).unwrap_err();
            assert!(e.to_string().contains("/rest/<api>"), "{bad}: {e}");
        }
    }

    #[test]
    fn form_params_are_signed_and_the_body_left_alone() {
        let body = b"payload=%7B%22a%22%3A+1%7D&name=caf%C3%A9";
        let s = run(
            head(Method::POST, "/rest/product/create?x=1", &form()),
            body,
            &creds("s", "k"),
            None,
            9,
        )
        .unwrap();
        assert_eq!(
            sign_of(&s),
            hmac_upper_hex(
                "s",
                "/product/createapp_keyknamecafépayload{\"a\": 1}sign_methodsha256timestamp9x1"
                    .as_bytes()
            )
        );
        assert_ne!(
            sign_of(&s),
            hmac_upper_hex("s", b"/product/createapp_keyksign_methodsha256timestamp9x1"),
            "form params left out"
        );
        assert_ne!(
            sign_of(&s),
            hmac_upper_hex("s", b"/product/createapp_keyknamecaf%C3%A9payload%7B%22a%22%3A+1%7Dsign_methodsha256timestamp9x1"),
            "values signed percent-encoded"
        );
        // System params only in the query; the body is the signer's input, never its output.
        assert!(s.head.path_and_query.starts_with(
            "/rest/product/create?x=1&app_key=k&sign_method=sha256&timestamp=9&sign="
        ));
        assert!(!s.head.path_and_query.contains("payload"));
    }

    #[test]
    fn system_params_in_a_body_are_refused_and_query_copies_replaced() {
        for field in [
            "app_key",
            "timestamp",
            "sign_method",
            "sign",
            "access_token",
            "session",
        ] {
            let body = format!("a=1&{field}=x");
            let e = run(
                head(Method::POST, "/rest/a", &form()),
                body.as_bytes(),
                &creds("s", "k"),
                None,
                1,
            )
            .unwrap_err();
            match e {
                SignError::BadRequest(m) => assert!(
                    m.contains(&format!("`{field}`")) && m.contains("remove it"),
                    "{m}"
                ),
                other => panic!("{other:?}"),
            }
        }
        let s = run(
            head(
                Method::GET,
                "/rest/a?app_key=other&timestamp=1&sign_method=md5&sign=abc&b=2",
                &[],
            ),
            b"",
            &creds("s", "k"),
            None,
            7,
        )
        .unwrap();
        assert_eq!(
            s.head.path_and_query,
            format!(
                "/rest/a?b=2&app_key=k&sign_method=sha256&timestamp=7&sign={}",
                sign_of(&s)
            )
        );
        assert_eq!(
            sign_of(&s),
            hmac_upper_hex("s", b"/aapp_keykb2sign_methodsha256timestamp7")
        );
    }

    #[test]
    fn multipart_text_fields_are_signed_and_file_parts_not() {
        let body = b"--B\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n<Request/>\r\n--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\x00\x01\xff\r\n--B--\r\n";
        let ct = [("content-type", "multipart/form-data; boundary=B")];
        let s = run(
            head(Method::POST, "/rest/image/upload", &ct),
            body,
            &creds("s", "k"),
            None,
            3,
        )
        .unwrap();
        assert_eq!(
            sign_of(&s),
            hmac_upper_hex(
                "s",
                b"/image/uploadapp_keykpayload<Request/>sign_methodsha256timestamp3"
            )
        );
        let no_boundary = [("content-type", "multipart/form-data")];
        assert!(run(
            head(Method::POST, "/rest/image/upload", &no_boundary),
            body,
            &creds("s", "k"),
            None,
            3
        )
        .is_err());
        let with_system =
            b"--B\r\nContent-Disposition: form-data; name=\"app_key\"\r\n\r\nk\r\n--B--\r\n";
        let e = run(
            head(Method::POST, "/rest/image/upload", &ct),
            with_system,
            &creds("s", "k"),
            None,
            3,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("multipart text part carries `app_key`"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_refused_and_empty_values_skipped() {
        for (pq, body) in [("/rest/a?x=1&x=2", ""), ("/rest/a?x=1", "x=2")] {
            let e = run(
                head(Method::POST, pq, &form()),
                body.as_bytes(),
                &creds("s", "k"),
                None,
                1,
            )
            .unwrap_err();
            assert!(e.to_string().contains("`x` appears more than once"), "{e}");
        }
        let s = run(
            head(Method::GET, "/rest/a?e=&f&g=1", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(
            sign_of(&s),
            hmac_upper_hex("s", b"/aapp_keykg1sign_methodsha256timestamp1")
        );
        assert!(
            s.head.path_and_query.starts_with("/rest/a?e=&f&g=1&"),
            "sent as given"
        );
    }

    #[test]
    fn token_goes_under_the_clients_name_and_never_to_auth_calls() {
        let t = Secret::new("PROFILE_AT");
        let s = run(
            head(Method::GET, "/rest/a?session=stale", &[]),
            b"",
            &creds("s", "k"),
            Some(&t),
            1,
        )
        .unwrap();
        assert_eq!(param(&s, "session").as_deref(), Some("PROFILE_AT"));
        assert_eq!(param(&s, "access_token"), None);
        assert_eq!(
            sign_of(&s),
            hmac_upper_hex(
                "s",
                b"/aapp_keyksessionPROFILE_ATsign_methodsha256timestamp1"
            )
        );
        assert!(!s.explanation.contains("PROFILE_AT"), "{}", s.explanation);
        // Without a profile token the client's own is kept and signed.
        let own = run(
            head(Method::GET, "/rest/a?access_token=OWN", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert_eq!(param(&own, "access_token").as_deref(), Some("OWN"));
        let auth = run(
            head(
                Method::POST,
                "/rest/auth/token/create?access_token=x",
                &form(),
            ),
            b"code=C",
            &creds("s", "k"),
            Some(&t),
            1,
        )
        .unwrap();
        assert_eq!(param(&auth, "access_token"), None);
        assert_eq!(
            sign_of(&auth),
            hmac_upper_hex(
                "s",
                b"/auth/token/createapp_keykcodeCsign_methodsha256timestamp1"
            )
        );
        // What the token endpoints take is as secret as a token: named, never shown.
        assert!(
            auth.explanation.contains("code<code>"),
            "{}",
            auth.explanation
        );
        let refresh = run(
            head(Method::POST, "/rest/auth/token/refresh", &form()),
            b"refresh_token=RT_SECRET_VALUE",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap();
        assert!(
            !refresh.explanation.contains("RT_SECRET_VALUE")
                && refresh.explanation.contains("refresh_token<refresh_token>"),
            "{}",
            refresh.explanation
        );
        let c = creds("s", "k");
        assert_eq!(
            c.token_need(&head(Method::POST, "/rest/auth/token/refresh", &[])),
            TokenNeed::None
        );
        assert_eq!(
            c.token_need(&head(Method::GET, "/rest/orders/get", &[])),
            TokenNeed::AccessToken
        );
        assert_eq!(
            c.token_need(&head(Method::POST, "/sync", &[])),
            TokenNeed::AccessToken
        );
    }

    #[test]
    fn non_utf8_is_refused_naming_the_parameter() {
        let e = run(
            head(Method::GET, "/rest/a?n=%C3", &[]),
            b"",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`n`"), "{e}");
        let e = run(
            head(Method::POST, "/rest/a", &form()),
            b"\xff=1",
            &creds("s", "k"),
            None,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn incomplete_signature_is_the_only_rejection() {
        let c = creds("s", "k");
        let status = StatusCode::OK;
        assert_eq!(
            c.rejection(status, br#"{"type":"ISV","code":"IncompleteSignature","message":"The request signature does not conform to platform standards","request_id":"r"}"#),
            Some("IncompleteSignature".to_owned())
        );
        assert_eq!(
            c.rejection(
                status,
                br#"{"type":"ISV","code":"IllegalAccessToken","message":"x"}"#
            ),
            None
        );
        assert_eq!(c.rejection(status, br#"{"code":"0","data":{}}"#), None);
        assert_eq!(c.rejection(status, b"<html>"), None);
        assert_eq!(c.scheme(), "Test IOP HMAC-SHA256");
    }
}
