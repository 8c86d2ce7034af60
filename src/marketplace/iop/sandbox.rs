//! The IOP gateway's offline stand-in: verifies `app_key`, `sign_method`, the millisecond
//! `timestamp` (7200 s window), the upper-case `sign` and the access token by the gateway's
//! rules with its own verifier (never the signer), answers in the IOP envelope
//! (`{"type","code","message","request_id"}`, `code` "0" on success) with its codes
//! (`IncompleteSignature`, `IllegalAccessToken`), and serves `/rest/auth/token/create` and
//! `/rest/auth/token/refresh` with short-lived access tokens and single-use, rotating refresh
//! tokens.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use http::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{multipart, IopPolicy, TIMESTAMP_WINDOW_SECS};
use crate::marketplace::stand_in::{TokenCheck, TokenKind};
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::{constant_time_eq, Secret};

const TOKEN_PATH_PREFIX: &str = "/rest/auth/token/";
const ACCESS_PREFIX: &str = "iop_sandbox_";
const REFRESH_PREFIX: &str = "iop_sandboxrt_";
/// Refresh tokens the stand-in grants from a token it did not mint live this long (Lazada's
/// "Test" apps get 30 days).
const REFRESH_TTL_SECS: u64 = 30 * 86400;
/// The names a token may travel under.
const TOKEN_PARAMS: [&str; 2] = ["access_token", "session"];

/// The stand-in for one profile: the app it verifies for, by its marketplace's policy.
#[derive(Debug)]
pub struct IopStandIn {
    pub policy: &'static IopPolicy,
    pub app_key: String,
    pub app_secret: Secret,
}

/// An IOP error: its `type` and `code`, and a message.
struct Refusal {
    kind: &'static str,
    code: &'static str,
    message: String,
}

fn isv(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        kind: "ISV",
        code,
        message: message.into(),
    }
}

impl StandIn for IopStandIn {
    /// `app_key` in the query (as signproxy sends it) or in the form (as the official SDKs do).
    fn claims(&self, req: &SandboxRequest) -> bool {
        req.query_param("app_key")
            .or_else(|| {
                req.form()
                    .into_iter()
                    .find(|(k, _)| k == "app_key")
                    .map(|(_, v)| v)
            })
            .as_deref()
            == Some(self.app_key.as_str())
    }

    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.path.starts_with(TOKEN_PATH_PREFIX)
    }

    fn token_hosts(&self) -> Vec<String> {
        vec![self.policy.token_host.to_owned()]
    }

    /// The gateway answers HTTP 200 with the outcome in `code`, errors included.
    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        let outcome = self.verify(req, cx).and_then(|params| {
            if self.is_token_request(req) {
                self.grant(req, &params, cx)
            } else {
                self.api(req, &params, cx)
            }
        });
        match outcome {
            Ok(mut body) => {
                if let Value::Object(fields) = &mut body {
                    fields.insert("code".to_owned(), json!("0"));
                    fields.insert("request_id".to_owned(), json!(cx.request_id));
                }
                SandboxAnswer::new(StatusCode::OK, body)
            }
            Err(Refusal {
                kind,
                code,
                message,
            }) => SandboxAnswer::new(
                StatusCode::OK,
                json!({"type": kind, "code": code, "message": message, "request_id": cx.request_id}),
            ),
        }
    }
}

impl IopStandIn {
    /// The common checks of every call; returns the signed parameters, decoded.
    fn verify(
        &self,
        req: &SandboxRequest,
        cx: &SandboxContext<'_>,
    ) -> Result<BTreeMap<String, String>, Refusal> {
        let prefix = if self.policy.sync_without_prefix && req.path == "/sync" {
            ""
        } else {
            match req.path.strip_prefix("/rest") {
                Some(api) if api.len() > 1 && api.starts_with('/') => api,
                _ => {
                    return Err(isv(
                        "InvalidApiPath",
                        format!(
                            "The specified API path `{}` is not found (sandbox: call /rest/<api>)",
                            req.path
                        ),
                    ))
                }
            }
        };
        let params = self.params(req)?;
        let param = |key: &str| params.get(key).map(String::as_str);
        match param("app_key") {
            None => return Err(isv("MissingAppKey", "The app_key parameter is missing")),
            Some(key) if key != self.app_key => {
                return Err(isv(
                    "InvalidAppKey",
                    format!("The app_key `{key}` is not known (the sandbox knows the app keys of your profiles)"),
                ))
            }
            Some(_) => {}
        }
        if param("sign_method") != Some("sha256") {
            return Err(isv(
                "IncompleteSignature",
                "The request signature does not conform to platform standards (sandbox: sign_method must be sha256)",
            ));
        }
        let timestamp = param("timestamp").unwrap_or_default();
        check_timestamp(timestamp, cx.now.millis()).map_err(|m| isv("InvalidTimestamp", m))?;
        let Some(sign) = param("sign") else {
            return Err(isv("MissingSignature", "The sign parameter is missing"));
        };
        let expected = expected_sign(self.app_secret.expose(), prefix, &params);
        // Exact text: lower-case hex is refused.
        if !bool::from(constant_time_eq(sign.as_bytes(), expected.as_bytes())) {
            return Err(isv(
                "IncompleteSignature",
                "The request signature does not conform to platform standards (sandbox: `signproxy doctor` names the mistake)",
            ));
        }
        Ok(params)
    }

    /// Query pairs, form fields and multipart text fields, decoded. A name given twice is
    /// refused: what the gateway does with it is undocumented.
    fn params(&self, req: &SandboxRequest) -> Result<BTreeMap<String, String>, Refusal> {
        let mut pairs = req.query_pairs();
        let content_type = req.header("content-type").unwrap_or_default();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media == "application/x-www-form-urlencoded" {
            pairs.extend(req.form());
        } else if media == "multipart/form-data" {
            let parts = multipart::boundary(&content_type)
                .ok_or_else(|| "no boundary".to_owned())
                .and_then(|b| multipart::parse(&req.body, &b))
                .map_err(|e| {
                    isv(
                        "InvalidParameter",
                        format!("The multipart body is malformed: {e}"),
                    )
                })?;
            for part in parts.into_iter().filter(|p| !p.is_file) {
                pairs.push((part.name, String::from_utf8_lossy(part.value).into_owned()));
            }
        }
        let mut params = BTreeMap::new();
        for (k, v) in pairs {
            if params.contains_key(&k) {
                return Err(isv(
                    "InvalidParameter",
                    format!("The parameter `{k}` is given more than once"),
                ));
            }
            params.insert(k, v);
        }
        Ok(params)
    }

    /// A business call: the access token, then a verified echo.
    fn api(
        &self,
        req: &SandboxRequest,
        params: &BTreeMap<String, String>,
        cx: &SandboxContext<'_>,
    ) -> Result<Value, Refusal> {
        let token = TOKEN_PARAMS
            .iter()
            .find_map(|name| params.get(*name))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                isv(
                    "MissingAccessToken",
                    "The access_token parameter is missing (give the profile a refresh_token or access_token)",
                )
            })?;
        match cx.tokens.check(
            TokenKind::Access,
            ACCESS_PREFIX,
            &self.app_key,
            token,
            cx.now,
        ) {
            TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
            TokenCheck::Expired { .. } | TokenCheck::Unknown => {
                return Err(isv(
                    "IllegalAccessToken",
                    "The specified access token is invalid or expired",
                ))
            }
        }
        let echo = req.echo(&[], &["access_token", "session"]);
        Ok(json!({"data": {"sandbox": echo}}))
    }

    /// `/rest/auth/token/create` (a `code`) and `/rest/auth/token/refresh` (a `refresh_token`).
    fn grant(
        &self,
        req: &SandboxRequest,
        params: &BTreeMap<String, String>,
        cx: &SandboxContext<'_>,
    ) -> Result<Value, Refusal> {
        if TOKEN_PARAMS.iter().any(|name| params.contains_key(*name)) {
            return Err(isv(
                "InvalidParameter",
                "The token endpoints take no access token",
            ));
        }
        let now = cx.now.secs();
        let param = |key: &str| params.get(key).map(String::as_str).unwrap_or_default();
        let refresh_expires_at = match req.path.as_str() {
            "/rest/auth/token/refresh" => {
                let presented = param("refresh_token");
                let old_expiry = match cx.tokens.check(
                    TokenKind::Refresh,
                    REFRESH_PREFIX,
                    &self.app_key,
                    presented,
                    cx.now,
                ) {
                    _ if presented.is_empty() => {
                        return Err(isv("MissingParameter", "The refresh_token parameter is missing"))
                    }
                    TokenCheck::Expired { .. } | TokenCheck::Unknown => {
                        return Err(isv(
                            "IllegalRefreshToken",
                            "The specified refresh token is invalid or expired: authorize the seller again",
                        ))
                    }
                    TokenCheck::Valid { expires_at } => Some(expires_at),
                    TokenCheck::Foreign => None,
                };
                if !cx.tokens.spend(&self.app_key, presented) {
                    return Err(isv(
                        "IllegalRefreshToken",
                        "This refresh token was already used: each refresh returns a new one, which replaces it (the sandbox honours each once)",
                    ));
                }
                match old_expiry {
                    Some(at) if self.policy.refresh_expiry_carries_over => at,
                    _ => now.saturating_add(REFRESH_TTL_SECS),
                }
            }
            "/rest/auth/token/create" => {
                let code = param("code");
                if code.is_empty() || !cx.tokens.spend(&self.app_key, &format!("code\0{code}")) {
                    return Err(isv(
                        "InvalidCode",
                        "The authorization code is missing or was already used",
                    ));
                }
                now.saturating_add(REFRESH_TTL_SECS)
            }
            _ => {
                return Err(isv(
                    "InvalidApiPath",
                    "Use /rest/auth/token/create with `code`, or /rest/auth/token/refresh with `refresh_token`",
                ))
            }
        };
        let expires_at = now.saturating_add(cx.token_ttl_secs);
        Ok(json!({
            "access_token": cx.tokens.mint(TokenKind::Access, ACCESS_PREFIX, &self.app_key, expires_at),
            "expires_in": cx.token_ttl_secs,
            "refresh_token": cx.tokens.mint(TokenKind::Refresh, REFRESH_PREFIX, &self.app_key, refresh_expires_at),
            "refresh_expires_in": refresh_expires_at.saturating_sub(now),
            "country": "sg",
            "account_platform": "seller_center",
            "account": "sandbox-seller@example.com",
            "country_user_info": [{"country": "sg", "user_id": "100000001", "seller_id": "100000002", "short_code": "SGSANDBOX"}],
        }))
    }
}

/// Unix milliseconds, 13 digits, within the gateway's window either way.
fn check_timestamp(text: &str, now_ms: u64) -> Result<(), String> {
    if text.is_empty() {
        return Err("The timestamp parameter is missing".to_owned());
    }
    let Some(ts) = text
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
    else {
        return Err(format!(
            "Invalid timestamp `{text}`: expected Unix milliseconds (13 digits)"
        ));
    };
    let hint = if text.len() <= 10 {
        " (it looks like seconds: send milliseconds)"
    } else {
        ""
    };
    if ts.abs_diff(now_ms) > TIMESTAMP_WINDOW_SECS * 1000 {
        return Err(format!(
            "Invalid timestamp {ts}: more than {TIMESTAMP_WINDOW_SECS} s from the server's clock{hint}"
        ));
    }
    Ok(())
}

/// The gateway's rule, written apart from the signer: the prefix, then every parameter but
/// `sign` with a non-empty value as `{name}{value}` in byte order (a `BTreeMap` of `String`s
/// orders by bytes); HMAC-SHA256 keyed with the secret, upper-case hex.
fn expected_sign(secret: &str, prefix: &str, params: &BTreeMap<String, String>) -> String {
    let mut text = prefix.as_bytes().to_vec();
    for (k, v) in params {
        if k != "sign" && !v.is_empty() {
            text.extend_from_slice(k.as_bytes());
            text.extend_from_slice(v.as_bytes());
        }
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(&text);
    hex::encode_upper(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::stand_in::TokenBook;
    use bytes::Bytes;
    use http::{HeaderMap, Method};

    const VECTOR_SIGN: &str = "4190D32361CFB9581350222F345CB77F3B19F0E31D162316848A2C1FFD5FAB4A";
    const VECTOR_MS: u64 = 1_517_820_392_000;

    fn stand_in() -> IopStandIn {
        IopStandIn {
            policy: &super::super::sign::tests::POLICY,
            app_key: "123456".into(),
            app_secret: Secret::new("helloworld"),
        }
    }

    fn request(method: Method, path: &str, query: &str, form: &str) -> SandboxRequest {
        let mut headers = HeaderMap::new();
        if !form.is_empty() {
            headers.insert(
                "content-type",
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
        }
        SandboxRequest {
            method,
            host: "api.example.test".into(),
            authority: "api.example.test".into(),
            path: path.into(),
            query: Some(query.into()),
            headers,
            body: Bytes::from(form.to_owned()),
        }
    }

    fn answer(req: &SandboxRequest, book: &TokenBook, now_secs: u64) -> Value {
        stand_in()
            .answer(req, &SandboxContext::at(now_secs, book))
            .body
    }

    fn vector(sign: &str, ts: &str) -> String {
        format!("app_key=123456&access_token=test&order_id=1234&sign_method=sha256&timestamp={ts}&sign={sign}")
    }

    /// A query signed here for `path` and `params` at `ms`, by the rule (for token calls).
    fn signed(prefix: &str, params: &[(&str, &str)], ms: u64) -> String {
        let ts = ms.to_string();
        let mut all: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("app_key".into(), "123456".into());
        all.insert("sign_method".into(), "sha256".into());
        all.insert("timestamp".into(), ts.clone());
        let sign = expected_sign("helloworld", prefix, &all);
        format!("app_key=123456&sign_method=sha256&timestamp={ts}&sign={sign}")
    }

    #[test]
    fn the_official_vector_verifies_and_tampering_is_incomplete_signature() {
        let book = TokenBook::new();
        let now = VECTOR_MS / 1000 + 10;
        let ok = answer(
            &request(
                Method::GET,
                "/rest/order/get",
                &vector(VECTOR_SIGN, "1517820392000"),
                "",
            ),
            &book,
            now,
        );
        assert_eq!(ok["code"], "0", "{ok}");
        assert_eq!(ok["data"]["sandbox"]["verified"], true);
        assert!(!ok.to_string().contains("\"test\""), "token echoed: {ok}");
        for (query, code) in [
            (
                vector(&VECTOR_SIGN.to_ascii_lowercase(), "1517820392000"),
                "IncompleteSignature",
            ),
            (vector(VECTOR_SIGN, "1517820392001"), "IncompleteSignature"),
            (vector(VECTOR_SIGN, "1517820392"), "InvalidTimestamp"),
            (
                vector(VECTOR_SIGN, "1517820392000").replace("sha256", "md5"),
                "IncompleteSignature",
            ),
            (
                vector(VECTOR_SIGN, "1517820392000").replace("123456", "999"),
                "InvalidAppKey",
            ),
        ] {
            let a = answer(
                &request(Method::GET, "/rest/order/get", &query, ""),
                &book,
                now,
            );
            assert_eq!(a["code"], code, "{query}: {a}");
            assert_eq!(a["type"], "ISV");
            assert_eq!(a["request_id"], "req-1");
        }
        // `/rest` signed into the prefix is the same request with another path.
        let a = answer(
            &request(
                Method::GET,
                "/order/get",
                &vector(VECTOR_SIGN, "1517820392000"),
                "",
            ),
            &book,
            now,
        );
        assert_eq!(a["code"], "InvalidApiPath", "{a}");
        let stale = answer(
            &request(
                Method::GET,
                "/rest/order/get",
                &vector(VECTOR_SIGN, "1517820392000"),
                "",
            ),
            &book,
            now + 7200,
        );
        assert_eq!(stale["code"], "InvalidTimestamp", "{stale}");
    }

    #[test]
    fn sync_form_params_are_verified_without_prefix() {
        let book = TokenBook::new();
        let ms = 1_700_000_000_000;
        let form = "method=aliexpress.trade.seller.orderlist.get&page_size=20";
        let mut query = signed(
            "",
            &[
                ("method", "aliexpress.trade.seller.orderlist.get"),
                ("page_size", "20"),
                ("access_token", "AT"),
            ],
            ms,
        );
        query.push_str("&access_token=AT");
        let a = answer(
            &request(Method::POST, "/sync", &query, form),
            &book,
            ms / 1000,
        );
        assert_eq!(a["code"], "0", "{a}");
        // The same fields left out of the form: the signature no longer holds.
        let a = answer(
            &request(
                Method::POST,
                "/sync",
                &query,
                "method=aliexpress.trade.seller.orderlist.get",
            ),
            &book,
            ms / 1000,
        );
        assert_eq!(a["code"], "IncompleteSignature", "{a}");
    }

    /// The official SDKs send every parameter, system ones included, in the form.
    #[test]
    fn system_params_in_the_form_verify_like_query_ones() {
        let book = TokenBook::new();
        let form = vector(VECTOR_SIGN, "1517820392000");
        let a = answer(
            &request(Method::POST, "/rest/order/get", "", &form),
            &book,
            VECTOR_MS / 1000,
        );
        assert_eq!(a["code"], "0", "{a}");
        let twice = answer(
            &request(Method::POST, "/rest/order/get", "order_id=1234", &form),
            &book,
            VECTOR_MS / 1000,
        );
        assert_eq!(twice["code"], "InvalidParameter", "{twice}");
    }

    #[test]
    fn refresh_tokens_rotate_once_and_expired_access_tokens_are_illegal() {
        let book = TokenBook::new();
        let ms = 1_700_000_000_000;
        let now = ms / 1000;
        let refresh = |rt: &str, book: &TokenBook| {
            let form = format!("refresh_token={rt}");
            let q = signed("/auth/token/refresh", &[("refresh_token", rt)], ms);
            answer(
                &request(Method::POST, "/rest/auth/token/refresh", &q, &form),
                book,
                now,
            )
        };
        let first = refresh("configured-rt", &book);
        assert_eq!(first["code"], "0", "{first}");
        assert_eq!(first["expires_in"], 7200);
        let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
        let second = refresh(&rt1, &book);
        assert_eq!(second["code"], "0", "{second}");
        // The carried-over policy keeps the first refresh token's expiry.
        assert_eq!(second["refresh_expires_in"], first["refresh_expires_in"]);
        assert_eq!(refresh(&rt1, &book)["code"], "IllegalRefreshToken");

        let at = second["access_token"].as_str().unwrap();
        let q = format!(
            "{}&access_token={at}",
            signed("/orders/get", &[("access_token", at)], ms + 7_300_000)
        );
        let expired = answer(
            &request(Method::GET, "/rest/orders/get", &q, ""),
            &book,
            now + 7300,
        );
        assert_eq!(expired["code"], "IllegalAccessToken", "{expired}");
        let q = format!(
            "{}&access_token={at}",
            signed("/orders/get", &[("access_token", at)], ms)
        );
        assert_eq!(
            answer(
                &request(Method::GET, "/rest/orders/get", &q, ""),
                &book,
                now
            )["code"],
            "0"
        );
    }

    mod signer_agrees {
        use super::*;
        use crate::marketplace::{Sign, SignInput};
        use proptest::prelude::*;

        /// Names and values from an alphabet with the characters that matter: escapes, `+`,
        /// `=`, non-ASCII, the system names.
        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z_]{0,6}",
                "(%41|%2B|%3D|%C3%A9|\\+|=|a|Z|_){0,4}",
                Just("sign".to_owned()),
                Just("access_token".to_owned()),
                Just("session".to_owned()),
                Just("app_key".to_owned()),
                Just("%E6%9D%B1".to_owned()),
            ]
        }

        fn pairs() -> impl Strategy<Value = String> {
            proptest::collection::vec((word(), word()), 0..6).prop_map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever a client sends, the signer either refuses it with a 400 or produces a
            /// request this stand-in's own verifier accepts, with the body unchanged.
            #[test]
            fn signed_requests_verify_or_are_refused(
                api in "/[a-z]{1,5}(/[a-z]{1,5})?",
                query in pairs(),
                form in proptest::option::of(pairs()),
                millis in 1_600_000_000_000u64..1_900_000_000_000,
            ) {
                let creds = crate::marketplace::iop::sign::IopCredentials {
                    policy: &super::super::super::sign::tests::POLICY,
                    app_key: "123456".into(),
                    app_secret: Secret::new("helloworld"),
                };
                let pq = format!("/rest{api}?{query}");
                let headers: &[(&str, &str)] = if form.is_some() {
                    &[("content-type", "application/x-www-form-urlencoded")]
                } else {
                    &[]
                };
                let head = super::super::super::sign::tests::head(Method::POST, &pq, headers);
                let body = form.clone().unwrap_or_default();
                let token = Secret::new("foreign-token");
                let input = SignInput {
                    head: &head,
                    body: body.as_bytes(),
                    access_token: Some(&token),
                    now: crate::clock::Timestamp::from_millis(millis),
                };
                match creds.sign(input) {
                    Err(crate::signing::SignError::BadRequest(_)) => {}
                    Err(other) => prop_assert!(false, "not a 400: {other:?}"),
                    Ok(signed) => {
                        let req = SandboxRequest {
                            method: Method::POST,
                            host: "api.example.test".into(),
                            authority: "api.example.test".into(),
                            path: signed.path().to_owned(),
                            query: signed.query().map(str::to_owned),
                            headers: signed.headers.clone(),
                            body: Bytes::from(body.clone()),
                        };
                        let book = TokenBook::new();
                        let a = stand_in().answer(&req, &SandboxContext::at(millis / 1000, &book));
                        prop_assert_eq!(&a.body["code"], "0", "{} {}: {}", signed.path_and_query, body, a.body);
                    }
                }
            }
        }
    }
}
