//! Marketplace token endpoints as pure protocol: the refresh request to send, the grant parsed
//! from the answer, and recognising an API's "access token expired" answer. No I/O.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use serde::Deserialize;

use crate::secret::Secret;

pub const TIKTOK_REFRESH_URL: &str = "https://auth.tiktok-shops.com/api/v2/token/refresh";
pub const EBAY_PRODUCTION_TOKEN_URL: &str = "https://api.ebay.com/identity/v1/oauth2/token";
pub const EBAY_SANDBOX_TOKEN_URL: &str = "https://api.sandbox.ebay.com/identity/v1/oauth2/token";
/// What an application token asks for when the profile names no scopes.
pub const EBAY_DEFAULT_APP_SCOPE: &str = "https://api.ebay.com/oauth/api_scope";

/// A token the marketplace granted. Times are absolute Unix seconds.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: Secret,
    pub expires_at: u64,
    /// TikTok rotates refresh tokens: the new one replaces the old.
    pub refresh_token: Option<Secret>,
    pub refresh_expires_at: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("the token endpoint refused: {code} {message}{hint}")]
    Rejected {
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("the token endpoint's answer is not understood (HTTP {status}): {reason}")]
    Malformed { status: u16, reason: String },
    #[error("cannot build the token request: {0}")]
    Request(String),
}

/// `GET .../token/refresh?app_key&app_secret&refresh_token&grant_type=refresh_token`. The URL
/// carries the app secret: it must never be logged.
pub fn tiktok_refresh_request(
    url: &str,
    app_key: &str,
    app_secret: &Secret,
    refresh_token: &Secret,
) -> Result<Request<Bytes>, GrantError> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("app_key", app_key)
        .append_pair("app_secret", app_secret.expose())
        .append_pair("refresh_token", refresh_token.expose())
        .append_pair("grant_type", "refresh_token")
        .finish();
    Request::builder()
        .method(Method::GET)
        .uri(format!("{url}?{query}"))
        .body(Bytes::new())
        .map_err(|_| GrantError::Request("the TikTok token URL is not valid".to_owned()))
}

#[derive(Deserialize)]
struct TiktokEnvelope {
    code: i64,
    #[serde(default)]
    message: String,
    data: Option<TiktokTokenData>,
}

#[derive(Deserialize)]
struct TiktokTokenData {
    access_token: String,
    access_token_expire_in: u64,
    refresh_token: Option<String>,
    refresh_token_expire_in: Option<u64>,
}

/// Parses TikTok's `{"code":0,"data":{...}}`. `*_expire_in` are absolute Unix times.
pub fn parse_tiktok_grant(status: u16, body: &[u8]) -> Result<Grant, GrantError> {
    let malformed = |reason: String| GrantError::Malformed { status, reason };
    let envelope: TiktokEnvelope = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not TikTok's JSON envelope ({e})")))?;
    if envelope.code != 0 {
        let hint = match envelope.code {
            36004001 => " (the refresh token has expired: authorize the shop again and put the new refresh_token in the config)",
            36004004 | 36004005 => " (no valid authorization: authorize the shop again)",
            _ => "",
        };
        return Err(GrantError::Rejected {
            code: envelope.code.to_string(),
            message: envelope.message,
            hint,
        });
    }
    let data = envelope
        .data
        .ok_or_else(|| malformed("code 0 but no `data`".to_owned()))?;
    if data.access_token.is_empty() {
        return Err(malformed("empty access_token".to_owned()));
    }
    Ok(Grant {
        access_token: Secret::new(data.access_token),
        expires_at: data.access_token_expire_in,
        refresh_token: data
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        refresh_expires_at: data.refresh_token_expire_in,
    })
}

/// `POST /identity/v1/oauth2/token` with Basic client auth and form-encoded values: the refresh
/// grant when there is a refresh token (user token), else client credentials (application token).
pub fn ebay_token_request(
    url: &str,
    client_id: &str,
    client_secret: &Secret,
    refresh_token: Option<&Secret>,
    scopes: &[String],
) -> Result<Request<Bytes>, GrantError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match refresh_token {
        Some(rt) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", rt.expose());
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
        }
        None => {
            form.append_pair("grant_type", "client_credentials");
            let scope = if scopes.is_empty() {
                EBAY_DEFAULT_APP_SCOPE.to_owned()
            } else {
                scopes.join(" ")
            };
            form.append_pair("scope", &scope);
        }
    }
    let basic = STANDARD.encode(format!("{client_id}:{}", client_secret.expose()));
    let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|_| GrantError::Request("client_id is not valid in a header".to_owned()))?;
    authorization.set_sensitive(true);
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::AUTHORIZATION, authorization)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(form.finish()))
        .map_err(|_| GrantError::Request(format!("token_url `{url}` is not valid")))
}

#[derive(Deserialize)]
struct EbayGrant {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct EbayOAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Parses eBay's grant; `expires_in` is a duration (unlike TikTok's absolute times).
pub fn parse_ebay_grant(status: u16, body: &[u8], now: u64) -> Result<Grant, GrantError> {
    if status == 200 {
        let grant: EbayGrant = serde_json::from_slice(body).map_err(|e| GrantError::Malformed {
            status,
            reason: format!("no access_token/expires_in ({e})"),
        })?;
        return Ok(Grant {
            access_token: Secret::new(grant.access_token),
            expires_at: now.saturating_add(grant.expires_in),
            refresh_token: None,
            refresh_expires_at: None,
        });
    }
    match serde_json::from_slice::<EbayOAuthError>(body) {
        Ok(e) => {
            let hint = match e.error.as_str() {
                "invalid_grant" => " (the refresh token is expired, revoked, mis-encoded or from another app: get a new one through eBay's consent flow)",
                "invalid_client" => " (check client_id and client_secret)",
                "invalid_scope" => " (check the profile's scopes against what the app and user consented to)",
                _ => "",
            };
            Err(GrantError::Rejected {
                code: e.error,
                message: e.error_description,
                hint,
            })
        }
        Err(_) => Err(GrantError::Malformed {
            status,
            reason: "not an OAuth error body".to_owned(),
        }),
    }
}

/// TikTok: code 105002 in the JSON envelope (HTTP status is often 200).
pub fn tiktok_token_expired(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Code {
        code: i64,
    }
    serde_json::from_slice::<Code>(body).is_ok_and(|c| c.code == 105002)
}

/// eBay: HTTP 401 with errorId 1001 ("Invalid access token").
pub fn ebay_token_expired(status: u16, body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(rename = "errorId")]
        error_id: i64,
    }
    status == 401
        && serde_json::from_slice::<Errors>(body)
            .is_ok_and(|e| e.errors.iter().any(|i| i.error_id == 1001))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiktok_request_carries_form_encoded_values() {
        let req = tiktok_refresh_request(
            TIKTOK_REFRESH_URL,
            "k",
            &Secret::new("s&x"),
            &Secret::new("TTP_a+b/c="),
        )
        .unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(
            req.uri().to_string(),
            "https://auth.tiktok-shops.com/api/v2/token/refresh?app_key=k&app_secret=s%26x&refresh_token=TTP_a%2Bb%2Fc%3D&grant_type=refresh_token"
        );
    }

    #[test]
    fn tiktok_grant_uses_absolute_times_and_rotates_the_refresh_token() {
        let body = br#"{"code":0,"message":"success","request_id":"r","data":{"access_token":"TTP_new","access_token_expire_in":1660556783,"refresh_token":"TTP_rt2","refresh_token_expire_in":1691487031,"open_id":"o","seller_name":"s","seller_base_region":"US","user_type":0,"granted_scopes":[]}}"#;
        let g = parse_tiktok_grant(200, body).unwrap();
        assert_eq!(g.access_token.expose(), "TTP_new");
        assert_eq!(g.expires_at, 1660556783);
        assert_eq!(g.refresh_token.unwrap().expose(), "TTP_rt2");
        assert_eq!(g.refresh_expires_at, Some(1691487031));
    }

    #[test]
    fn tiktok_refusal_explains_the_fix() {
        let e = parse_tiktok_grant(
            200,
            br#"{"code":36004001,"message":"refresh token expired","data":null}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("36004001") && e.contains("authorize the shop again"),
            "{e}"
        );
        assert!(matches!(
            parse_tiktok_grant(502, b"<html>"),
            Err(GrantError::Malformed { status: 502, .. })
        ));
    }

    #[test]
    fn ebay_refresh_grant_is_form_encoded_with_basic_auth() {
        let rt = Secret::new("v^1.1#i^1#r^1#f^0#p^3#I^3#t^Ul4xMF8=");
        let scopes = vec![
            "https://api.ebay.com/oauth/api_scope/sell.finances".to_owned(),
            "https://api.ebay.com/oauth/api_scope".to_owned(),
        ];
        let req = ebay_token_request(
            EBAY_PRODUCTION_TOKEN_URL,
            "id",
            &Secret::new("sec"),
            Some(&rt),
            &scopes,
        )
        .unwrap();
        assert_eq!(req.headers()["authorization"], "Basic aWQ6c2Vj");
        assert_eq!(
            req.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        let body = String::from_utf8(req.body().to_vec()).unwrap();
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=v%5E1.1%23i%5E1%23r%5E1%23f%5E0%23p%5E3%23I%5E3%23t%5EUl4xMF8%3D&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope%2Fsell.finances+https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(decoded[1].1, rt.expose(), "round-trips exactly");
    }

    #[test]
    fn ebay_application_token_uses_client_credentials() {
        let req = ebay_token_request(EBAY_SANDBOX_TOKEN_URL, "id", &Secret::new("sec"), None, &[])
            .unwrap();
        assert_eq!(
            std::str::from_utf8(req.body()).unwrap(),
            "grant_type=client_credentials&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope"
        );
    }

    #[test]
    fn ebay_expires_in_is_a_duration() {
        let g = parse_ebay_grant(
            200,
            br#"{"access_token":"v^1.1#x","expires_in":7200,"token_type":"User Access Token"}"#,
            1000,
        )
        .unwrap();
        assert_eq!(g.expires_at, 8200);
        let e = parse_ebay_grant(400, br#"{"error":"invalid_grant","error_description":"the provided authorization refresh token is invalid"}"#, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid_grant") && e.contains("consent flow"),
            "{e}"
        );
    }

    #[test]
    fn expired_token_answers_are_recognised_and_nothing_else() {
        assert!(tiktok_token_expired(
            br#"{"code":105002,"message":"access token expired"}"#
        ));
        assert!(!tiktok_token_expired(
            br#"{"code":105001,"message":"invalid"}"#
        ));
        assert!(!tiktok_token_expired(b"not json"));
        let ebay = br#"{"errors":[{"errorId":1001,"domain":"OAuth","category":"REQUEST","message":"Invalid access token"}]}"#;
        assert!(ebay_token_expired(401, ebay));
        assert!(!ebay_token_expired(403, ebay));
        assert!(!ebay_token_expired(
            401,
            br#"{"errors":[{"errorId":1100}]}"#
        ));
    }
}
