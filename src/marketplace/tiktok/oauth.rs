//! TikTok Shop OAuth as pure protocol: the refresh-token grant (refresh tokens rotate), its
//! answer, and the "access token expired" answer (code 105002).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde::Deserialize;

use crate::clock::Timestamp;
use crate::marketplace::{fingerprint, Grant, GrantError, TokenEndpoint};
use crate::secret::Secret;

pub const TIKTOK_REFRESH_URL: &str = "https://auth.tiktok-shops.com/api/v2/token/refresh";

/// A TikTok profile's managed tokens: its app credentials and the refresh token it starts from.
#[derive(Debug)]
pub struct TiktokOAuth {
    pub app_key: String,
    pub app_secret: Secret,
    pub refresh_token: Secret,
}

impl TokenEndpoint for TiktokOAuth {
    fn describe(&self) -> &'static str {
        "managed access tokens (refresh token)"
    }

    fn initial_refresh_token(&self) -> Option<&Secret> {
        Some(&self.refresh_token)
    }

    fn seed(&self) -> String {
        fingerprint(&["tiktok", &self.app_key, self.refresh_token.expose()])
    }

    fn config_digest(&self) -> String {
        fingerprint(&[&self.seed(), self.app_secret.expose()])
    }

    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        _now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError> {
        let refresh = refresh.ok_or_else(|| GrantError::Request("no refresh token".to_owned()))?;
        tiktok_refresh_request(TIKTOK_REFRESH_URL, &self.app_key, &self.app_secret, refresh)
    }

    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        _now: Timestamp,
    ) -> Result<Grant, GrantError> {
        parse_tiktok_grant(status.as_u16(), body)
    }

    fn is_expired_answer(&self, _status: StatusCode, body: &[u8]) -> bool {
        tiktok_token_expired(body)
    }

    fn salvage_refresh_token(&self, body: &[u8]) -> Option<Secret> {
        crate::marketplace::json_secret_at(body, &["data", "refresh_token"])
    }
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

/// TikTok: code 105002 in the JSON envelope (HTTP status is often 200).
pub fn tiktok_token_expired(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Code {
        code: i64,
    }
    serde_json::from_slice::<Code>(body).is_ok_and(|c| c.code == 105002)
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
    fn a_rotated_refresh_token_is_found_in_an_otherwise_unusable_answer() {
        let o = TiktokOAuth {
            app_key: "k".into(),
            app_secret: Secret::new("s"),
            refresh_token: Secret::new("rt"),
        };
        let half = br#"{"code":0,"data":{"access_token":"","refresh_token":"TTP_rt9"}}"#;
        assert!(parse_tiktok_grant(200, half).is_err());
        assert_eq!(
            o.salvage_refresh_token(half).map(|t| t.expose().to_owned()),
            Some("TTP_rt9".to_owned())
        );
        assert!(o
            .salvage_refresh_token(br#"{"code":0,"data":{"refresh_token":""}}"#)
            .is_none());
        assert!(o.salvage_refresh_token(b"<html>").is_none());
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
    }
}
