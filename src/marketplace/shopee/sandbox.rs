//! Shopee's offline stand-in: verifies `partner_id`, `timestamp`, `sign` and the access token by
//! Shopee's rules with its own verifier (never the signer), answers in Shopee's envelope
//! (`{request_id, error, message, response}`) with its codes, and serves the token endpoints
//! with short-lived access tokens and single-use, rotating refresh tokens.

use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use super::TIMESTAMP_WINDOW_SECS;
use crate::marketplace::stand_in::{TokenCheck, TokenKind};
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::{constant_time_eq, Secret};

const AUTH_PREFIX: &str = "/api/v2/auth/";
const REFRESH_PATH: &str = "/api/v2/auth/access_token/get";
const CODE_PATH: &str = "/api/v2/auth/token/get";
const ACCESS_PREFIX: &str = "sandbox-at-";
const REFRESH_PREFIX: &str = "sandbox-rt-";
/// Refresh tokens last 30 days at Shopee.
const REFRESH_TTL_SECS: u64 = 30 * 24 * 3600;

/// The stand-in for one Shopee profile: the partner it verifies for.
#[derive(Debug)]
pub struct ShopeeStandIn {
    pub partner_id: u64,
    pub partner_key: Secret,
    pub token_host: String,
}

/// A Shopee error: HTTP status, `error` and `message`.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    message: String,
}

fn refuse(status: StatusCode, error: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        error,
        message: message.into(),
    }
}

impl StandIn for ShopeeStandIn {
    fn claims(&self, req: &SandboxRequest) -> bool {
        req.query_param("partner_id").as_deref() == Some(self.partner_id.to_string().as_str())
    }

    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.path.starts_with(AUTH_PREFIX)
    }

    fn token_hosts(&self) -> Vec<String> {
        vec![self.token_host.clone()]
    }

    fn answer(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> SandboxAnswer {
        let outcome = if self.is_token_request(req) {
            self.grant(req, cx)
        } else {
            self.api(req, cx)
        };
        match outcome {
            Ok(body) => SandboxAnswer::new(StatusCode::OK, body),
            Err(Refusal {
                status,
                error,
                message,
            }) => SandboxAnswer::new(
                status,
                json!({"request_id": cx.request_id, "error": error, "message": message}),
            ),
        }
    }
}

/// The account a signed call is for, read from its query.
enum Account {
    Shop(u64),
    Merchant(u64),
}

impl ShopeeStandIn {
    /// The checks every call shares: partner_id, timestamp, then the sign over `account_part`
    /// (empty for Public APIs).
    fn check_signed(
        &self,
        req: &SandboxRequest,
        cx: &SandboxContext<'_>,
        account_part: &str,
    ) -> Result<(), Refusal> {
        let forbidden = StatusCode::FORBIDDEN;
        let param = |key: &str| req.query_param(key);
        match param("partner_id") {
            None => return Err(refuse(forbidden, "error_param", "partner_id is required")),
            Some(p) if p != self.partner_id.to_string() => {
                return Err(refuse(
                    forbidden,
                    "invalid_partner_id",
                    format!(
                        "Invalid partner_id `{p}` (the sandbox knows your profiles' partner ids)"
                    ),
                ))
            }
            Some(_) => {}
        }
        let Some(timestamp) = param("timestamp") else {
            return Err(refuse(forbidden, "error_param", "timestamp is required"));
        };
        check_timestamp(&timestamp, cx.now.secs())
            .map_err(|m| refuse(forbidden, "error_param", m))?;
        let Some(sign) = param("sign") else {
            return Err(refuse(forbidden, "error_param", "sign is required"));
        };
        let base = format!("{}{}{timestamp}{account_part}", self.partner_id, req.path);
        let expected = expected_sign(self.partner_key.expose(), &base);
        // Exact text: upper-case hex or a short sign is refused.
        if !bool::from(constant_time_eq(sign.as_bytes(), expected.as_bytes())) {
            return Err(refuse(
                forbidden,
                "error_sign",
                "Wrong sign. (sandbox: `signproxy doctor` names the mistake)",
            ));
        }
        Ok(())
    }

    /// A Shop or Merchant call: signed with its token and id, the token one the sandbox granted
    /// to that id (or a foreign one it cannot judge).
    fn api(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, Refusal> {
        let forbidden = StatusCode::FORBIDDEN;
        if !matches!(req.method, Method::GET | Method::POST) {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "error_param",
                "Shopee APIs take GET or POST",
            ));
        }
        if !req.path.starts_with("/api/v2/") {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "error_not_found",
                "Wrong path: Open Platform v2 paths start with /api/v2/",
            ));
        }
        let public = req.path.starts_with("/api/v2/public/")
            || matches!(
                req.path.as_str(),
                "/api/v2/shop/auth_partner" | "/api/v2/shop/cancel_auth_partner"
            );
        if public {
            self.check_signed(req, cx, "")?;
            return Ok(success(cx, sample(&req.path, cx.now.secs()), req));
        }
        let id = |key: &str| -> Result<Option<u64>, Refusal> {
            req.query_param(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        refuse(
                            forbidden,
                            "error_param",
                            format!("{key} must be an integer"),
                        )
                    })
                })
                .transpose()
        };
        let account = match (id("merchant_id")?, id("shop_id")?) {
            (Some(m), _) => Account::Merchant(m),
            (None, Some(s)) => Account::Shop(s),
            (None, None) => {
                return Err(refuse(
                    forbidden,
                    "error_param",
                    "shop_id or merchant_id is required for this API",
                ))
            }
        };
        let Some(token) = req.query_param("access_token").filter(|t| !t.is_empty()) else {
            return Err(refuse(
                forbidden,
                "error_param",
                "access_token is required for this API",
            ));
        };
        let (app, id) = match account {
            Account::Shop(s) => (self.app("shop_id", s), s),
            Account::Merchant(m) => (self.app("merchant_id", m), m),
        };
        self.check_signed(req, cx, &format!("{token}{id}"))?;
        match cx
            .tokens
            .check(TokenKind::Access, ACCESS_PREFIX, &app, &token, cx.now)
        {
            TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
            TokenCheck::Expired { .. } | TokenCheck::Unknown => {
                return Err(refuse(
                    forbidden,
                    "invalid_acceess_token",
                    "Invalid access token.",
                ))
            }
        }
        Ok(success(cx, sample(&req.path, cx.now.secs()), req))
    }

    /// The token endpoints: public-signed POSTs with a JSON body naming the partner and one id.
    fn grant(&self, req: &SandboxRequest, cx: &SandboxContext<'_>) -> Result<Value, Refusal> {
        let bad = StatusCode::BAD_REQUEST;
        if req.method != Method::POST {
            return Err(refuse(bad, "error_param", "The token endpoints take POST"));
        }
        self.check_signed(req, cx, "")?;
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|_| refuse(bad, "error_param", "The body must be JSON"))?;
        if body["partner_id"].as_u64() != Some(self.partner_id) {
            return Err(refuse(
                bad,
                "error_param",
                "partner_id is required in the body too, as an integer equal to the query's",
            ));
        }
        let (key, id) = match (body["shop_id"].as_u64(), body["merchant_id"].as_u64()) {
            (Some(s), None) => ("shop_id", s),
            (None, Some(m)) => ("merchant_id", m),
            _ => {
                return Err(refuse(
                    bad,
                    "error_param",
                    "Give exactly one of shop_id and merchant_id, as an integer",
                ))
            }
        };
        let app = self.app(key, id);
        let now = cx.now.secs();
        match req.path.as_str() {
            REFRESH_PATH => {
                let presented = body["refresh_token"].as_str().unwrap_or_default();
                if presented.is_empty() {
                    return Err(refuse(bad, "error_param", "refresh_token is required"));
                }
                match cx
                    .tokens
                    .check(TokenKind::Refresh, REFRESH_PREFIX, &app, presented, cx.now)
                {
                    TokenCheck::Valid { .. } | TokenCheck::Foreign => {}
                    TokenCheck::Expired { .. } | TokenCheck::Unknown => {
                        return Err(refuse(
                            StatusCode::FORBIDDEN,
                            "error_auth",
                            "Invalid refresh_token: expired, or not issued to this partner and id",
                        ))
                    }
                }
                if !cx.tokens.spend(&app, presented) {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "error_auth",
                        "Invalid refresh_token: it was already used (each refresh returns a new one, which replaces it)",
                    ));
                }
            }
            CODE_PATH => {
                let code = body["code"].as_str().unwrap_or_default();
                if code.is_empty() || !cx.tokens.spend(&app, &format!("code\0{code}")) {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "error_auth",
                        "Invalid code: missing or already used",
                    ));
                }
            }
            _ => {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    "error_not_found",
                    "Use /api/v2/auth/token/get (code) or /api/v2/auth/access_token/get (refresh_token)",
                ))
            }
        }
        let expires_at = now.saturating_add(cx.token_ttl_secs);
        let mut answer = json!({
            "request_id": cx.request_id,
            "error": "",
            "message": "",
            "access_token": cx.tokens.mint(TokenKind::Access, ACCESS_PREFIX, &app, expires_at),
            "refresh_token": cx.tokens.mint(TokenKind::Refresh, REFRESH_PREFIX, &app, now.saturating_add(REFRESH_TTL_SECS)),
            "expire_in": cx.token_ttl_secs,
            "partner_id": self.partner_id,
        });
        answer[key] = json!(id);
        Ok(answer)
    }

    /// The token book's name for one partner's account: a token granted to one shop never
    /// passes for another's.
    fn app(&self, key: &str, id: u64) -> String {
        format!("{}:{key}={id}", self.partner_id)
    }
}

fn success(cx: &SandboxContext<'_>, mut response: Value, req: &SandboxRequest) -> Value {
    if let Value::Object(fields) = &mut response {
        fields.insert("sandbox".to_owned(), req.echo(&[], &["access_token"]));
    }
    json!({"request_id": cx.request_id, "error": "", "message": "", "response": response})
}

/// Unix seconds, within 5 minutes of the server's clock either way.
fn check_timestamp(text: &str, now: u64) -> Result<(), String> {
    let Some(ts) = text
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
    else {
        return Err(format!(
            "Invalid timestamp `{text}`: expected Unix seconds (an integer)"
        ));
    };
    if ts.abs_diff(now) > TIMESTAMP_WINDOW_SECS {
        let hint = if text.len() >= 13 {
            " (it looks like milliseconds: send seconds)"
        } else {
            "; sign every request, retries included, with the current time"
        };
        return Err(format!(
            "Invalid timestamp {ts}: {} s from the server's clock (at most {TIMESTAMP_WINDOW_SECS} s){hint}",
            ts.abs_diff(now)
        ));
    }
    Ok(())
}

/// Shopee's rule, written apart from the signer: lowercase hex HMAC-SHA256 of the base string,
/// keyed with the partner key's text.
fn expected_sign(partner_key: &str, base: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()) else {
        return String::new();
    };
    mac.update(base.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A plausible `response` for a few common endpoints; `{}` for the rest.
fn sample(path: &str, now: u64) -> Value {
    match path {
        "/api/v2/shop/get_shop_info" => json!({
            "shop_name": "Sandbox Shop",
            "region": "SG",
            "status": "NORMAL",
            "is_cb": false,
            "is_sip": false,
            "auth_time": now.saturating_sub(86400),
            "expire_time": now.saturating_add(364 * 86400),
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

    const PARTNER: u64 = 2001887;
    const KEY: &str = "shpk-sandbox-key";
    const NOW: u64 = 1_700_000_000;
    const SHOP: u64 = 14701711;

    fn stand_in() -> ShopeeStandIn {
        ShopeeStandIn {
            partner_id: PARTNER,
            partner_key: Secret::new(KEY),
            token_host: "partner.shopeemobile.com".into(),
        }
    }

    /// The reference HMAC, with the hmac crate over a literal base.
    fn hmac(base: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(base.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn request(method: Method, path: &str, query: &str, body: &[u8]) -> SandboxRequest {
        SandboxRequest {
            method,
            host: "partner.shopeemobile.com".into(),
            authority: "partner.shopeemobile.com".into(),
            path: path.into(),
            query: Some(query.into()),
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn answer(req: &SandboxRequest, book: &TokenBook, now: u64) -> (u16, Value) {
        let a = stand_in().answer(req, &SandboxContext::at(now, book));
        (a.status.as_u16(), a.body)
    }

    fn shop_query(token: &str, ts: u64, sign: &str) -> String {
        format!(
            "partner_id={PARTNER}&timestamp={ts}&access_token={token}&shop_id={SHOP}&sign={sign}"
        )
    }

    fn shop_sign(token: &str, ts: u64) -> String {
        hmac(&format!(
            "{PARTNER}/api/v2/shop/get_shop_info{ts}{token}{SHOP}"
        ))
    }

    #[test]
    fn a_right_shop_call_gets_the_sample_in_shopees_envelope() {
        let book = TokenBook::new();
        let q = shop_query("static-token", NOW, &shop_sign("static-token", NOW));
        let req = request(Method::GET, "/api/v2/shop/get_shop_info", &q, b"");
        let (status, body) = answer(&req, &book, NOW + 5);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["error"], "");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(body["response"]["shop_name"], "Sandbox Shop");
        assert_eq!(body["response"]["sandbox"]["verified"], true);
        assert!(!body.to_string().contains("static-token"));
        assert!(stand_in().claims(&req));
    }

    #[test]
    fn each_rule_has_its_refusal() {
        let book = TokenBook::new();
        let error = |query: &str, now: u64| {
            let req = request(Method::GET, "/api/v2/shop/get_shop_info", query, b"");
            answer(&req, &book, now).1["error"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let right = shop_sign("t", NOW);
        assert_eq!(error(&shop_query("t", NOW, &right), NOW), "");
        assert_eq!(
            error(&shop_query("t", NOW, &right.to_uppercase()), NOW),
            "error_sign"
        );
        assert_eq!(error(&shop_query("t", NOW, &right[1..]), NOW), "error_sign");
        // The token is part of the base: another token with the same sign is wrong.
        assert_eq!(error(&shop_query("u", NOW, &right), NOW), "error_sign");
        // Outside 5 minutes either way: error_param "Invalid timestamp".
        assert_eq!(
            error(&shop_query("t", NOW, &right), NOW + 301),
            "error_param"
        );
        assert_eq!(
            error(&shop_query("t", NOW, &right), NOW - 301),
            "error_param"
        );
        assert_eq!(error(&shop_query("t", NOW, &right), NOW + 300), "");
        let ms = NOW * 1000;
        let req = request(
            Method::GET,
            "/api/v2/shop/get_shop_info",
            &shop_query("t", ms, &shop_sign("t", ms)),
            b"",
        );
        let (_, body) = answer(&req, &book, NOW);
        assert!(
            body["message"].as_str().unwrap().contains("milliseconds"),
            "{body}"
        );
        assert_eq!(
            error(
                &format!("partner_id=1&timestamp={NOW}&access_token=t&shop_id={SHOP}&sign={right}"),
                NOW
            ),
            "invalid_partner_id"
        );
        let no_shop = format!("partner_id={PARTNER}&timestamp={NOW}&access_token=t&sign={right}");
        assert_eq!(error(&no_shop, NOW), "error_param");
        // Public: partner_id + path + timestamp only.
        let public = |sign: &str| {
            let q = format!("partner_id={PARTNER}&timestamp={NOW}&sign={sign}");
            let req = request(Method::GET, "/api/v2/public/get_shops_by_partner", &q, b"");
            answer(&req, &book, NOW).1["error"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            public(&hmac(&format!(
                "{PARTNER}/api/v2/public/get_shops_by_partner{NOW}"
            ))),
            ""
        );
        assert_eq!(
            public(&hmac(&format!(
                "{PARTNER}/api/v2/public/get_shops_by_partner{NOW}t{SHOP}"
            ))),
            "error_sign"
        );
    }

    fn refresh(book: &TokenBook, rt: &str, now: u64) -> Value {
        let q = format!(
            "partner_id={PARTNER}&timestamp={now}&sign={}",
            hmac(&format!("{PARTNER}{REFRESH_PATH}{now}"))
        );
        let body = json!({"refresh_token": rt, "partner_id": PARTNER, "shop_id": SHOP}).to_string();
        let req = request(Method::POST, REFRESH_PATH, &q, body.as_bytes());
        answer(&req, book, now).1
    }

    #[test]
    fn refresh_tokens_rotate_once_and_access_tokens_expire() {
        let book = TokenBook::new();
        let first = refresh(&book, "config-refresh-token", NOW);
        assert_eq!(first["error"], "", "{first}");
        assert_eq!(first["expire_in"], 7200);
        assert_eq!(first["shop_id"], SHOP);
        assert_eq!(
            refresh(&book, "config-refresh-token", NOW)["error"],
            "error_auth"
        );
        let rotated = first["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(refresh(&book, &rotated, NOW + 1)["error"], "");
        assert_eq!(refresh(&book, &rotated, NOW + 2)["error"], "error_auth");

        let token = first["access_token"].as_str().unwrap().to_owned();
        let call = |now: u64| {
            let q = shop_query(&token, now, &shop_sign(&token, now));
            let req = request(Method::GET, "/api/v2/shop/get_shop_info", &q, b"");
            answer(&req, &book, now).1["error"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(call(NOW + 10), "");
        assert_eq!(call(NOW + 7200), "invalid_acceess_token");
        // A token granted to this shop does not pass for another.
        let other = format!(
            "partner_id={PARTNER}&timestamp={NOW}&access_token={token}&shop_id=1&sign={}",
            hmac(&format!("{PARTNER}/api/v2/shop/get_shop_info{NOW}{token}1"))
        );
        let req = request(Method::GET, "/api/v2/shop/get_shop_info", &other, b"");
        assert_eq!(answer(&req, &book, NOW).1["error"], "invalid_acceess_token");
    }

    #[test]
    fn the_token_endpoint_wants_its_public_sign_and_partner_id_in_the_body() {
        let book = TokenBook::new();
        let q = format!(
            "partner_id={PARTNER}&timestamp={NOW}&sign={}",
            hmac(&format!("{PARTNER}{REFRESH_PATH}{NOW}rt{SHOP}"))
        );
        let body =
            json!({"refresh_token": "rt", "partner_id": PARTNER, "shop_id": SHOP}).to_string();
        let req = request(Method::POST, REFRESH_PATH, &q, body.as_bytes());
        assert_eq!(answer(&req, &book, NOW).1["error"], "error_sign");
        let q = format!(
            "partner_id={PARTNER}&timestamp={NOW}&sign={}",
            hmac(&format!("{PARTNER}{REFRESH_PATH}{NOW}"))
        );
        let body = json!({"refresh_token": "rt", "shop_id": SHOP}).to_string();
        let req = request(Method::POST, REFRESH_PATH, &q, body.as_bytes());
        assert_eq!(answer(&req, &book, NOW).1["error"], "error_param");
    }
}
