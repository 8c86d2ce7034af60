//! TikTok Shop's offline stand-in: verifies `sign`, `timestamp`, `app_key` and the access token
//! by TikTok's rules with its own verifier (never the signer), answers in TikTok's envelope
//! (`{code, message, request_id, data}`) with its codes, and serves the token endpoint with
//! short-lived access tokens and single-use, rotating refresh tokens.

use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{TIMESTAMP_MAX_AGE_SECS, TIMESTAMP_MAX_AHEAD_SECS};
use crate::marketplace::stand_in::{TokenCheck, TokenKind};
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::{constant_time_eq, Secret};

/// Refresh tokens the stand-in grants live this long (TikTok's have lasted about a year).
const REFRESH_TTL_SECS: u64 = 365 * 24 * 3600;
const TOKEN_HOST: &str = "auth.tiktok-shops.com";
const TOKEN_PATH_PREFIX: &str = "/api/v2/token/";
const ACCESS_PREFIX: &str = "TTP_sandbox_";
const REFRESH_PREFIX: &str = "TTP_sandboxrt_";
const ACCESS_TOKEN_HEADER: &str = "x-tts-access-token";

/// The stand-in for one TikTok profile: the app it verifies for.
#[derive(Debug)]
pub struct TiktokStandIn {
    pub app_key: String,
    pub app_secret: Secret,
}

impl StandIn for TiktokStandIn {
    fn claims(&self, req: &SandboxRequest) -> bool {
        req.query_param("app_key").as_deref() == Some(self.app_key.as_str())
    }

    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.path.starts_with(TOKEN_PATH_PREFIX)
    }

    fn token_hosts(&self) -> Vec<String> {
        vec![TOKEN_HOST.to_owned()]
    }

    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        let outcome = if self.is_token_request(req) {
            self.grant(req, cx)
        } else {
            self.api(req, cx)
        };
        match outcome {
            Ok(data) => envelope(StatusCode::OK, 0, "Success", cx, data),
            Err(Refusal {
                status,
                code,
                message,
            }) => envelope(status, code, &message, cx, Value::Null),
        }
    }
}

/// A TikTok error: HTTP status, code and message.
struct Refusal {
    status: StatusCode,
    code: u32,
    message: String,
}

fn refuse(status: StatusCode, code: u32, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn envelope(
    status: StatusCode,
    code: u32,
    message: &str,
    cx: &SandboxContext<'_>,
    data: Value,
) -> SandboxAnswer {
    SandboxAnswer::new(
        status,
        json!({"code": code, "message": message, "request_id": cx.request_id, "data": data}),
    )
}

impl TiktokStandIn {
    /// A signed API call: app key, sign, timestamp, then the access token.
    fn api(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, Refusal> {
        let unauthorized = StatusCode::UNAUTHORIZED;
        let pairs = req.query_pairs();
        let param = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        match param("app_key") {
            None => return Err(refuse(unauthorized, 36009004, "The app_key query parameter is missing")),
            Some(key) if *key != self.app_key => {
                return Err(refuse(
                    unauthorized,
                    36009004,
                    format!("Invalid app_key `{key}`: no app with this key (the sandbox knows the app keys of your profiles)"),
                ))
            }
            Some(_) => {}
        }
        let Some(sign) = param("sign") else {
            return Err(refuse(
                unauthorized,
                36009004,
                "The sign query parameter is missing",
            ));
        };
        let Some(timestamp) = param("timestamp") else {
            return Err(refuse(
                unauthorized,
                36009004,
                "The timestamp query parameter is missing",
            ));
        };
        check_timestamp(timestamp, cx.now.secs()).map_err(|m| refuse(unauthorized, 36009004, m))?;
        let expected = expected_sign(self.app_secret.expose(), req, &pairs);
        // Exact text: upper-case hex is refused, as TikTok does.
        if !bool::from(constant_time_eq(sign.as_bytes(), expected.as_bytes())) {
            return Err(refuse(
                unauthorized,
                106001,
                "Invalid credentials. The sign query parameter is invalid. (sandbox: `signproxy doctor` names the mistake)",
            ));
        }
        let token = req.header(ACCESS_TOKEN_HEADER).unwrap_or_default();
        if token.is_empty() {
            return Err(refuse(
                unauthorized,
                36009004,
                "Invalid x-tts-access-token header: it is missing (give the profile a refresh_token or access_token)",
            ));
        }
        match cx.tokens.check(
            TokenKind::Access,
            ACCESS_PREFIX,
            &self.app_key,
            &token,
            cx.now,
        ) {
            TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
            TokenCheck::Expired { expires_at } => {
                return Err(refuse(
                    unauthorized,
                    105002,
                    format!(
                        "Access token is expired, please refresh it (it expired at {expires_at})"
                    ),
                ))
            }
            TokenCheck::Unknown => {
                return Err(refuse(
                    unauthorized,
                    105001,
                    "Access token is invalid: this sandbox did not grant it to this app",
                ))
            }
        }
        let mut data = sample(&req.path, cx.now.secs());
        if let Value::Object(fields) = &mut data {
            fields.insert(
                "sandbox".to_owned(),
                req.echo(&[ACCESS_TOKEN_HEADER], &["access_token", "app_secret"]),
            );
        }
        Ok(data)
    }

    /// `GET /api/v2/token/get` (auth code) and `/api/v2/token/refresh`: unsigned, with the app
    /// secret in the query.
    fn grant(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, Refusal> {
        let bad = StatusCode::BAD_REQUEST;
        if req.method != Method::GET {
            return Err(refuse(bad, 36009004, "The token endpoint takes GET"));
        }
        let pairs = req.query_pairs();
        let param = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let app_ok = constant_time_eq(param("app_key").as_bytes(), self.app_key.as_bytes())
            & constant_time_eq(
                param("app_secret").as_bytes(),
                self.app_secret.expose().as_bytes(),
            );
        if !bool::from(app_ok) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                36009004,
                "Invalid app_key or app_secret",
            ));
        }
        let now = cx.now.secs();
        match (req.path.as_str(), param("grant_type")) {
            ("/api/v2/token/refresh", "refresh_token") => {
                let presented = param("refresh_token");
                match cx.tokens.check(
                    TokenKind::Refresh,
                    REFRESH_PREFIX,
                    &self.app_key,
                    presented,
                    cx.now,
                ) {
                    _ if presented.is_empty() => {
                        return Err(refuse(bad, 36004005, "The refresh_token parameter is missing"))
                    }
                    TokenCheck::Expired { .. } => {
                        return Err(refuse(bad, 36004001, "The refresh token has expired: authorize the shop again"))
                    }
                    TokenCheck::Unknown => {
                        return Err(refuse(bad, 36004005, "No authorization record for this refresh token"))
                    }
                    TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
                }
                if !cx.tokens.spend(&self.app_key, presented) {
                    return Err(refuse(
                        bad,
                        36004005,
                        "This refresh token was already used: each refresh returns a new one, which replaces it (the sandbox honours each once)",
                    ));
                }
            }
            ("/api/v2/token/get", "authorized_code") => {
                let code = param("auth_code");
                if code.is_empty() || !cx.tokens.spend(&self.app_key, &format!("auth_code\0{code}")) {
                    return Err(refuse(bad, 36004004, "The auth_code is missing or was already used"));
                }
            }
            _ => {
                return Err(refuse(
                    bad,
                    36009004,
                    "Use /api/v2/token/refresh with grant_type=refresh_token, or /api/v2/token/get with grant_type=authorized_code",
                ))
            }
        }
        let expires_at = now.saturating_add(cx.token_ttl_secs);
        let refresh_expires_at = now.saturating_add(REFRESH_TTL_SECS);
        Ok(json!({
            "access_token": cx.tokens.mint(TokenKind::Access, ACCESS_PREFIX, &self.app_key, expires_at),
            "access_token_expire_in": expires_at,
            "refresh_token": cx.tokens.mint(TokenKind::Refresh, REFRESH_PREFIX, &self.app_key, refresh_expires_at),
            "refresh_token_expire_in": refresh_expires_at,
            "open_id": "sandbox-open-id",
            "seller_name": "Sandbox Seller",
            "seller_base_region": "GB",
            "user_type": 0,
            "granted_scopes": ["seller.authorization.info", "seller.order.info"],
        }))
    }
}

/// Unix seconds within TikTok's window: not older than 5 minutes, not over 30 s ahead.
fn check_timestamp(text: &str, now: u64) -> Result<(), String> {
    let Some(ts) = text
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
    else {
        return Err(format!(
            "Invalid timestamp `{text}`: expected Unix seconds (10 digits)"
        ));
    };
    if ts > now.saturating_add(TIMESTAMP_MAX_AHEAD_SECS) {
        let hint = if text.len() >= 13 {
            " (it looks like milliseconds: send seconds)"
        } else {
            ""
        };
        return Err(format!(
            "Invalid timestamp {ts}: {} s ahead of the server's clock (at most {TIMESTAMP_MAX_AHEAD_SECS} s){hint}",
            ts - now
        ));
    }
    if ts.saturating_add(TIMESTAMP_MAX_AGE_SECS) < now {
        return Err(format!(
            "Invalid timestamp {ts}: {} s old (at most {TIMESTAMP_MAX_AGE_SECS} s); sign every request, retries included, with the current time",
            now - ts
        ));
    }
    Ok(())
}

/// TikTok's rule, written from the spec apart from the signer: every decoded query pair but
/// `sign` and `access_token`, sorted byte-wise by key, concatenated after the path, then the
/// body unless it is multipart, wrapped in the secret; HMAC-SHA256 keyed with the secret, as
/// lower-case hex.
fn expected_sign(secret: &str, req: &SandboxRequest, pairs: &[(String, String)]) -> String {
    let mut signed: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "sign" && k != "access_token")
        .collect();
    signed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut text = Vec::with_capacity(secret.len() * 2 + req.path.len() + req.body.len() + 64);
    text.extend_from_slice(secret.as_bytes());
    text.extend_from_slice(req.path.as_bytes());
    for (key, value) in signed {
        text.extend_from_slice(key.as_bytes());
        text.extend_from_slice(value.as_bytes());
    }
    let multipart = req
        .header("content-type")
        .and_then(|ct| {
            ct.split(';')
                .next()
                .map(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
        })
        .unwrap_or(false);
    if !multipart {
        text.extend_from_slice(&req.body);
    }
    text.extend_from_slice(secret.as_bytes());
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(&text);
    hex::encode(mac.finalize().into_bytes())
}

/// A plausible `data` for a few common endpoints; `{}` for the rest.
fn sample(path: &str, now: u64) -> Value {
    match path {
        "/authorization/202309/shops" => json!({
            "shops": [{
                "id": "7495000000000000001",
                "name": "Sandbox Shop",
                "region": "GB",
                "seller_type": "LOCAL",
                "cipher": "ROW_sandboxcipher0001",
                "code": "GBSANDBOX1"
            }]
        }),
        "/order/202309/orders/search" => json!({
            "next_page_token": "",
            "total_count": 1,
            "orders": [{
                "id": "576000000000000001",
                "status": "UNPAID",
                "create_time": now.saturating_sub(3600),
                "update_time": now.saturating_sub(60),
                "payment": {"currency": "GBP", "total_amount": "19.99", "sub_total": "19.99"},
                "line_items": [{
                    "id": "577000000000000001",
                    "product_name": "Sandbox T-shirt",
                    "sku_name": "M",
                    "sale_price": "19.99",
                    "currency": "GBP"
                }]
            }]
        }),
        _ => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::stand_in::TokenBook;
    use bytes::Bytes;
    use http::HeaderMap;

    const SECRET: &str = "e59af819cc";
    const KEY: &str = "29a39d";
    const VECTOR_SIGN: &str = "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";
    const VECTOR_TS: u64 = 1_623_812_664;

    fn stand_in() -> TiktokStandIn {
        TiktokStandIn {
            app_key: KEY.into(),
            app_secret: Secret::new(SECRET),
        }
    }

    fn request(method: Method, path: &str, query: &str, token: Option<&str>) -> SandboxRequest {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert(ACCESS_TOKEN_HEADER, t.parse().unwrap());
        }
        SandboxRequest {
            method,
            host: "open-api.tiktokglobalshop.com".into(),
            authority: "open-api.tiktokglobalshop.com".into(),
            path: path.into(),
            query: Some(query.into()),
            headers,
            body: Bytes::new(),
        }
    }

    fn answer(req: &SandboxRequest, book: &TokenBook, now: u64) -> (u16, Value) {
        let a = stand_in().answer(req, &SandboxContext::at(now, book));
        (a.status.as_u16(), a.body)
    }

    fn vector_query(sign: &str) -> String {
        format!("app_key={KEY}&timestamp={VECTOR_TS}&sign={sign}")
    }

    #[test]
    fn the_official_vector_verifies_and_gets_the_shops_sample() {
        let book = TokenBook::new();
        let req = request(
            Method::GET,
            "/authorization/202309/shops",
            &vector_query(VECTOR_SIGN),
            Some("a-static-token"),
        );
        let (status, body) = answer(&req, &book, VECTOR_TS + 10);
        assert_eq!((status, body["code"].as_u64()), (200, Some(0)), "{body}");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(body["data"]["shops"][0]["name"], "Sandbox Shop");
        assert_eq!(body["data"]["sandbox"]["verified"], true);
        assert!(!body.to_string().contains("a-static-token"));
    }

    #[test]
    fn each_rule_has_its_refusal() {
        let book = TokenBook::new();
        let code = |query: &str, token: Option<&str>, now: u64| {
            let req = request(Method::GET, "/authorization/202309/shops", query, token);
            answer(&req, &book, now).1["code"].as_u64().unwrap()
        };
        let now = VECTOR_TS + 10;
        let t = Some("tok");
        assert_eq!(
            code(&vector_query(&VECTOR_SIGN.to_uppercase()), t, now),
            106001
        );
        assert_eq!(
            code(&vector_query(&VECTOR_SIGN.replace('b', "c")), t, now),
            106001
        );
        assert_eq!(
            code(&format!("timestamp={VECTOR_TS}&sign={VECTOR_SIGN}"), t, now),
            36009004
        );
        assert_eq!(
            code(
                &format!("app_key=other&timestamp={VECTOR_TS}&sign={VECTOR_SIGN}"),
                t,
                now
            ),
            36009004
        );
        assert_eq!(
            code(&format!("app_key={KEY}&timestamp={VECTOR_TS}"), t, now),
            36009004
        );
        // Stale and ahead: the same correct signature outside the window.
        assert_eq!(
            code(&vector_query(VECTOR_SIGN), t, VECTOR_TS + 301),
            36009004
        );
        assert_eq!(
            code(&vector_query(VECTOR_SIGN), t, VECTOR_TS - 31),
            36009004
        );
        assert_eq!(code(&vector_query(VECTOR_SIGN), t, VECTOR_TS + 300), 0);
        assert_eq!(code(&vector_query(VECTOR_SIGN), None, now), 36009004);
        // The signed parameters are sorted: a reordered query still verifies; an extra param
        // that was not signed does not.
        assert_eq!(
            code(
                &format!("sign={VECTOR_SIGN}&timestamp={VECTOR_TS}&app_key={KEY}"),
                t,
                now
            ),
            0
        );
        assert_eq!(
            code(
                &format!("{}&page_size=20", vector_query(VECTOR_SIGN)),
                t,
                now
            ),
            106001
        );
        // access_token in the query is never signed.
        assert_eq!(
            code(
                &format!("{}&access_token=x", vector_query(VECTOR_SIGN)),
                t,
                now
            ),
            0
        );
    }

    #[test]
    fn millisecond_timestamps_are_named() {
        let message = check_timestamp("1623812664000", VECTOR_TS).unwrap_err();
        assert!(message.contains("milliseconds"), "{message}");
        assert!(check_timestamp("1623812664.5", VECTOR_TS).is_err());
    }

    #[test]
    fn the_body_is_signed_unless_multipart() {
        // The doc's body-bearing string to sign, recomputed here by hand.
        let body = br#"{"address":"https://partner.tiktokshop.com","event_type":"PACKAGE_UPDATE"}"#;
        let mut req = request(
            Method::POST,
            "/event/202309/webhooks",
            "app_key=68xu9ks5p4i8&shop_cipher=ROW_xkMbgAAAeVAQra0eZWebFQq5aIK&timestamp=1696909648",
            None,
        );
        req.body = Bytes::from_static(body);
        let pairs = req.query_pairs();
        let string = format!("s/event/202309/webhooksapp_key68xu9ks5p4i8shop_cipherROW_xkMbgAAAeVAQra0eZWebFQq5aIKtimestamp1696909648{}s", std::str::from_utf8(body).unwrap());
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s").unwrap();
        mac.update(string.as_bytes());
        assert_eq!(
            expected_sign("s", &req, &pairs),
            hex::encode(mac.finalize().into_bytes())
        );
        let with_body = expected_sign("s", &req, &pairs);
        req.headers.insert(
            "content-type",
            "Multipart/Form-Data; boundary=x".parse().unwrap(),
        );
        assert_ne!(expected_sign("s", &req, &pairs), with_body);
    }

    #[test]
    fn tokens_are_granted_rotated_once_and_expire() {
        let book = TokenBook::new();
        let now = 1_700_000_000;
        let grant = |rt: &str, at: u64| {
            let query = format!(
                "app_key={KEY}&app_secret={SECRET}&refresh_token={rt}&grant_type=refresh_token"
            );
            let mut req = request(Method::GET, "/api/v2/token/refresh", &query, None);
            req.host = TOKEN_HOST.into();
            answer(&req, &book, at).1
        };
        let first = grant("config-refresh-token", now);
        assert_eq!(first["code"], 0, "{first}");
        assert_eq!(first["data"]["access_token_expire_in"], now + 7200);
        // The configured (foreign) refresh token works once; the rotated one replaces it.
        assert_eq!(grant("config-refresh-token", now)["code"], 36004005);
        let rotated = first["data"]["refresh_token"].as_str().unwrap().to_owned();
        let second = grant(&rotated, now + 1);
        assert_eq!(second["code"], 0, "{second}");
        assert_eq!(grant(&rotated, now + 2)["code"], 36004005);

        let token = first["data"]["access_token"].as_str().unwrap().to_owned();
        let signed = |at: u64| {
            let mut req = request(
                Method::GET,
                "/authorization/202309/shops",
                &vector_query(VECTOR_SIGN),
                Some(&token),
            );
            req.query = Some(vector_query(VECTOR_SIGN));
            answer(&req, &book, at).1["code"].as_u64().unwrap()
        };
        // The vector's timestamp pins `now` near it; the token's life is checked at that time.
        assert_eq!(signed(VECTOR_TS + 1), 0);
        let forged = token.replacen("TTP_sandbox_", "TTP_sandbox_9", 1);
        let mut req = request(
            Method::GET,
            "/authorization/202309/shops",
            &vector_query(VECTOR_SIGN),
            Some(&forged),
        );
        req.query = Some(vector_query(VECTOR_SIGN));
        assert_eq!(answer(&req, &book, VECTOR_TS + 1).1["code"], 105001);

        let wrong_secret =
            format!("app_key={KEY}&app_secret=nope&refresh_token=x&grant_type=refresh_token");
        let req = request(Method::GET, "/api/v2/token/refresh", &wrong_secret, None);
        assert_eq!(answer(&req, &book, now).1["code"], 36009004);
    }

    #[test]
    fn an_expired_token_gets_105002() {
        let book = TokenBook::new();
        let token = book.mint(TokenKind::Access, ACCESS_PREFIX, KEY, VECTOR_TS + 5);
        let req = request(
            Method::GET,
            "/authorization/202309/shops",
            &vector_query(VECTOR_SIGN),
            Some(&token),
        );
        assert_eq!(answer(&req, &book, VECTOR_TS + 4).1["code"], 0);
        assert_eq!(answer(&req, &book, VECTOR_TS + 5).1["code"], 105002);
    }
}
