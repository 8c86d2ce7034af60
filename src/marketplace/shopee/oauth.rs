//! Shopee OAuth as pure protocol: the refresh grant (`POST /api/v2/auth/access_token/get`,
//! public-signed; refresh tokens are single use and rotate), its answer, and the
//! "invalid access token" answer.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde::Deserialize;

use super::sign::{base_string, hmac_hex, Account};
use crate::clock::Timestamp;
use crate::marketplace::{fingerprint, Grant, GrantError, TokenEndpoint};
use crate::secret::Secret;

pub const REFRESH_PATH: &str = "/api/v2/auth/access_token/get";
/// Shopee's refresh tokens last 30 days; the answer does not say so, the guide does.
const REFRESH_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// A Shopee profile's managed tokens: its partner, the account the tokens belong to, the refresh
/// token it starts from, and the host that refreshes them.
#[derive(Debug)]
pub struct ShopeeOAuth {
    pub partner_id: u64,
    pub partner_key: Secret,
    pub account: Account,
    pub refresh_token: Secret,
    pub host: String,
}

impl ShopeeOAuth {
    /// `shop_id=S` or `merchant_id=M`: what the store key and the grant body name.
    fn id(&self) -> Option<(&'static str, u64)> {
        match self.account {
            Account::Shop(s) => Some(("shop_id", s)),
            Account::Merchant(m) => Some(("merchant_id", m)),
            Account::None => None,
        }
    }
}

impl TokenEndpoint for ShopeeOAuth {
    fn describe(&self) -> &'static str {
        "managed access tokens (single-use, rotating refresh token)"
    }

    fn initial_refresh_token(&self) -> Option<&Secret> {
        Some(&self.refresh_token)
    }

    fn seed(&self) -> String {
        let id = self
            .id()
            .map(|(k, v)| format!("{k}={v}"))
            .unwrap_or_default();
        fingerprint(&[
            "shopee",
            &self.partner_id.to_string(),
            &id,
            self.refresh_token.expose(),
        ])
    }

    fn config_digest(&self) -> String {
        fingerprint(&[&self.seed(), self.partner_key.expose(), &self.host])
    }

    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError> {
        let refresh = refresh.ok_or_else(|| GrantError::Request("no refresh token".to_owned()))?;
        let (id_key, id) = self.id().ok_or_else(|| {
            GrantError::Request(
                "the profile names no shop_id or merchant_id to refresh tokens for".to_owned(),
            )
        })?;
        refresh_request(
            &self.host,
            self.partner_id,
            &self.partner_key,
            refresh,
            id_key,
            id,
            now,
        )
    }

    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        parse_grant(status.as_u16(), body, now.secs())
    }

    fn is_expired_answer(&self, _status: StatusCode, body: &[u8]) -> bool {
        token_expired(body)
    }

    /// Shopee advises refreshing about ten minutes ahead of the 4 h expiry.
    fn refresh_margin_secs(&self) -> u64 {
        600
    }

    fn salvage_refresh_token(&self, body: &[u8]) -> Option<Secret> {
        crate::marketplace::json_secret_at(body, &["refresh_token"])
    }
}

/// `POST https://HOST/api/v2/auth/access_token/get?partner_id&timestamp&sign` (public sign) with
/// `{"refresh_token","partner_id","shop_id"|"merchant_id"}`: partner_id in the query and the body.
/// The body carries the refresh token: it must never be logged.
pub fn refresh_request(
    host: &str,
    partner_id: u64,
    partner_key: &Secret,
    refresh_token: &Secret,
    id_key: &str,
    id: u64,
    now: Timestamp,
) -> Result<Request<Bytes>, GrantError> {
    let timestamp = now.secs();
    let base = base_string(partner_id, REFRESH_PATH, timestamp, None);
    let sign = hmac_hex(partner_key.expose(), base.as_bytes());
    let mut body = serde_json::Map::new();
    body.insert(
        "refresh_token".to_owned(),
        serde_json::Value::String(refresh_token.expose().to_owned()),
    );
    body.insert("partner_id".to_owned(), partner_id.into());
    body.insert(id_key.to_owned(), id.into());
    let body = serde_json::to_vec(&serde_json::Value::Object(body))
        .map_err(|_| GrantError::Request("cannot encode the refresh request".to_owned()))?;
    Request::builder()
        .method(Method::POST)
        .uri(format!(
            "https://{host}{REFRESH_PATH}?partner_id={partner_id}&timestamp={timestamp}&sign={sign}"
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .map_err(|_| GrantError::Request(format!("the Shopee host `{host}` is not a valid host")))
}

/// Every field optional (and `null` read as absent): what is missing is reported, not guessed.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expire_in: Option<u64>,
}

/// Parses the token answer: fields are top-level; `expire_in` is a lifetime in seconds.
pub fn parse_grant(status: u16, body: &[u8], now: u64) -> Result<Grant, GrantError> {
    let malformed = |reason: String| GrantError::Malformed { status, reason };
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not Shopee's JSON token answer ({e})")))?;
    let error = answer.error.unwrap_or_default();
    let message = answer.message.unwrap_or_default();
    if !error.is_empty() {
        let about_refresh = message.to_ascii_lowercase().contains("refresh");
        let hint = match error.as_str() {
            "error_sign" => " (check partner_id and partner_key, and that the host belongs to the key's environment: test partners on the sandbox host, live ones on production)",
            "invalid_partner_id" => " (a test partner_id works only on the sandbox host, a live one only on production hosts)",
            _ if about_refresh || error == "error_auth" => " (Shopee no longer accepts this refresh token: it is spent, expired or the authorization was cancelled; the seller must authorize the app again, then put the new refresh_token in the config)",
            _ => "",
        };
        return Err(GrantError::Rejected {
            code: error,
            message,
            hint,
        });
    }
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token".to_owned()))?;
    let expire_in = answer
        .expire_in
        .ok_or_else(|| malformed("no expire_in".to_owned()))?;
    let refresh_token = answer
        .refresh_token
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    Ok(Grant {
        access_token: Secret::new(access_token),
        expires_at: now.saturating_add(expire_in),
        refresh_expires_at: refresh_token
            .as_ref()
            .map(|_| now.saturating_add(REFRESH_TOKEN_TTL_SECS)),
        refresh_token,
    })
}

/// `invalid_acceess_token` (sic, as Shopee spells it) or `invalid_access_token` in the envelope.
pub fn token_expired(body: &[u8]) -> bool {
    super::sign::Envelope::parse(body).is_some_and(|e| {
        matches!(
            e.error.as_str(),
            "invalid_acceess_token" | "invalid_access_token"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth() -> ShopeeOAuth {
        ShopeeOAuth {
            partner_id: 2001887,
            partner_key: Secret::new("shpk-key"),
            account: Account::Shop(14701711),
            refresh_token: Secret::new("rt-0"),
            host: "partner.shopeemobile.com".into(),
        }
    }

    fn reference(key: &str, base: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(base.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn the_refresh_request_is_public_signed_with_partner_id_in_query_and_body() {
        let o = oauth();
        let req = o
            .grant_request(Some(&Secret::new("rt-1")), Timestamp::from_secs(1655714431))
            .unwrap();
        assert_eq!(req.method(), Method::POST);
        let sign = reference("shpk-key", "2001887/api/v2/auth/access_token/get1655714431");
        assert_eq!(
            req.uri().to_string(),
            format!("https://partner.shopeemobile.com/api/v2/auth/access_token/get?partner_id=2001887&timestamp=1655714431&sign={sign}")
        );
        assert_eq!(req.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"refresh_token":"rt-1","partner_id":2001887,"shop_id":14701711})
        );
        let merchant = ShopeeOAuth {
            account: Account::Merchant(1000000),
            ..o
        };
        let req = merchant
            .grant_request(Some(&Secret::new("rt")), Timestamp::from_secs(1))
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(body["merchant_id"], 1000000);
        assert!(body.get("shop_id").is_none());
    }

    #[test]
    fn the_grant_rotates_and_its_lifetime_is_relative() {
        let body = br#"{"request_id":"r","error":"","message":"","access_token":"at-2","refresh_token":"rt-2","expire_in":14400,"partner_id":2001887,"shop_id":14701711}"#;
        let g = parse_grant(200, body, 1_700_000_000).unwrap();
        assert_eq!(g.access_token.expose(), "at-2");
        assert_eq!(g.expires_at, 1_700_014_400);
        assert_eq!(g.refresh_token.unwrap().expose(), "rt-2");
        assert_eq!(g.refresh_expires_at, Some(1_700_000_000 + 30 * 86400));
    }

    #[test]
    fn refusals_explain_the_fix_and_garbage_is_malformed() {
        let e = parse_grant(
            403,
            br#"{"request_id":"r","error":"error_auth","message":"Invalid refresh_token"}"#,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("error_auth") && e.contains("authorize the app again"),
            "{e}"
        );
        let e = parse_grant(403, br#"{"error":"error_sign","message":"Wrong sign."}"#, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("partner_key"), "{e}");
        assert!(matches!(
            parse_grant(502, b"<html>", 1),
            Err(GrantError::Malformed { status: 502, .. })
        ));
        assert!(matches!(
            parse_grant(200, br#"{"error":"","access_token":"a"}"#, 1),
            Err(GrantError::Malformed { .. })
        ));
    }

    #[test]
    fn expired_token_answers_are_recognised_and_nothing_else() {
        assert!(token_expired(
            br#"{"request_id":"r","error":"invalid_acceess_token","message":"Invalid access token"}"#
        ));
        assert!(token_expired(br#"{"error":"invalid_access_token"}"#));
        assert!(!token_expired(br#"{"error":"error_sign"}"#));
        assert!(!token_expired(b"nope"));
    }

    #[test]
    fn the_seed_follows_partner_account_and_refresh_token() {
        let a = oauth();
        let expected = fingerprint(&["shopee", "2001887", "shop_id=14701711", "rt-0"]);
        assert_eq!(a.seed(), expected);
        let other = ShopeeOAuth {
            account: Account::Shop(1),
            ..oauth()
        };
        assert_ne!(a.seed(), other.seed());
        assert!(!format!("{a:?}").contains("shpk-key") && !format!("{a:?}").contains("rt-0"));
    }
}
