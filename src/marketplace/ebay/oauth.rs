//! eBay OAuth as pure protocol: the refresh-token grant (user tokens) or client credentials
//! (application tokens), the answer, and the "access token expired" answer (401, errorId 1001).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use serde::Deserialize;

use crate::clock::Timestamp;
use crate::marketplace::{fingerprint, Grant, GrantError, TokenEndpoint};
use crate::secret::Secret;

pub const EBAY_PRODUCTION_TOKEN_URL: &str = "https://api.ebay.com/identity/v1/oauth2/token";
pub const EBAY_SANDBOX_TOKEN_URL: &str = "https://api.sandbox.ebay.com/identity/v1/oauth2/token";
/// What an application token asks for when the profile names no scopes.
pub const EBAY_DEFAULT_APP_SCOPE: &str = "https://api.ebay.com/oauth/api_scope";

/// An eBay profile's managed tokens.
#[derive(Debug)]
pub struct EbayOAuth {
    pub client_id: String,
    pub client_secret: Secret,
    /// User tokens by the refresh-token grant; without it, application tokens.
    pub refresh_token: Option<Secret>,
    pub scopes: Vec<String>,
    pub token_url: String,
}

impl TokenEndpoint for EbayOAuth {
    fn describe(&self) -> &'static str {
        match self.refresh_token {
            Some(_) => "managed user access tokens (refresh token)",
            None => "managed application access tokens",
        }
    }

    fn initial_refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    fn seed(&self) -> String {
        fingerprint(&[
            "ebay",
            &self.client_id,
            self.refresh_token
                .as_ref()
                .map(Secret::expose)
                .unwrap_or(""),
            &self.scopes.join(" "),
            &self.token_url,
        ])
    }

    fn config_digest(&self) -> String {
        fingerprint(&[&self.seed(), self.client_secret.expose()])
    }

    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        _now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError> {
        ebay_token_request(
            &self.token_url,
            &self.client_id,
            &self.client_secret,
            refresh,
            &self.scopes,
        )
    }

    /// Client credentials with eBay's base scope, whatever the profile's own grant: the Key
    /// Management API takes an application token only.
    fn application_grant_request(
        &self,
        _now: Timestamp,
    ) -> Option<Result<Request<Bytes>, GrantError>> {
        Some(ebay_token_request(
            &self.token_url,
            &self.client_id,
            &self.client_secret,
            None,
            &[],
        ))
    }

    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        parse_ebay_grant(status.as_u16(), body, now.secs())
    }

    fn is_expired_answer(&self, status: StatusCode, body: &[u8]) -> bool {
        ebay_token_expired(status.as_u16(), body)
    }
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
        let ebay = br#"{"errors":[{"errorId":1001,"domain":"OAuth","category":"REQUEST","message":"Invalid access token"}]}"#;
        assert!(ebay_token_expired(401, ebay));
        assert!(!ebay_token_expired(403, ebay));
        assert!(!ebay_token_expired(
            401,
            br#"{"errors":[{"errorId":1100}]}"#
        ));
    }
}
