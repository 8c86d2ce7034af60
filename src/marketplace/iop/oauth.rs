//! IOP tokens as pure protocol: the signed `POST /rest/auth/token/refresh` (form-encoded
//! `refresh_token`, system parameters in the query, no access token), its answer (durations in
//! seconds, `code` "0" on success, a new refresh token each time), and the
//! `IllegalAccessToken` answer.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::sign::{base_string, envelope_code, hmac_upper_hex};
use super::IopPolicy;
use crate::clock::Timestamp;
use crate::marketplace::{fingerprint, Grant, GrantError, TokenEndpoint};
use crate::secret::Secret;

/// The API name the refresh call is signed with.
const REFRESH_API: &str = "/auth/token/refresh";

/// A profile's managed tokens: its app and the refresh token it starts from.
#[derive(Debug)]
pub struct IopOAuth {
    pub policy: &'static IopPolicy,
    pub app_key: String,
    pub app_secret: Secret,
    pub refresh_token: Secret,
}

impl TokenEndpoint for IopOAuth {
    fn describe(&self) -> &'static str {
        "managed access tokens (refresh token)"
    }

    fn initial_refresh_token(&self) -> Option<&Secret> {
        Some(&self.refresh_token)
    }

    fn seed(&self) -> String {
        fingerprint(&[self.policy.id, &self.app_key, self.refresh_token.expose()])
    }

    fn config_digest(&self) -> String {
        fingerprint(&[&self.seed(), self.app_secret.expose()])
    }

    fn refresh_expiry_carries_over(&self) -> bool {
        self.policy.refresh_expiry_carries_over
    }

    fn grant_request(
        &self,
        refresh: Option<&Secret>,
        now: Timestamp,
    ) -> Result<Request<Bytes>, GrantError> {
        let refresh = refresh.ok_or_else(|| GrantError::Request("no refresh token".to_owned()))?;
        refresh_request(
            self.policy.refresh_url,
            &self.app_key,
            &self.app_secret,
            refresh,
            now,
        )
    }

    fn parse_grant(
        &self,
        status: StatusCode,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        parse_grant(status.as_u16(), body, now.secs(), self.policy.consent_hint)
    }

    fn is_expired_answer(&self, _status: StatusCode, body: &[u8]) -> bool {
        envelope_code(body).as_deref() == Some("IllegalAccessToken")
    }

    /// Lazada's guide: refresh 30 minutes before expiry (tokens live days, so this is cheap).
    fn refresh_margin_secs(&self) -> u64 {
        1800
    }

    fn salvage_refresh_token(&self, body: &[u8]) -> Option<Secret> {
        crate::marketplace::json_secret_at(body, &["refresh_token"])
    }
}

/// `POST {url}?app_key&sign_method&timestamp&sign` with the body `refresh_token=…`, signed
/// with the prefix `/auth/token/refresh`. The body carries the refresh token: never log it.
pub fn refresh_request(
    url: &str,
    app_key: &str,
    app_secret: &Secret,
    refresh_token: &Secret,
    now: Timestamp,
) -> Result<Request<Bytes>, GrantError> {
    let timestamp = now.millis().to_string();
    let params = [
        ("refresh_token", refresh_token.expose()),
        ("app_key", app_key),
        ("sign_method", "sha256"),
        ("timestamp", timestamp.as_str()),
    ];
    let sign = hmac_upper_hex(app_secret.expose(), &base_string(REFRESH_API, &params));
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("app_key", app_key)
        .append_pair("sign_method", "sha256")
        .append_pair("timestamp", &timestamp)
        .append_pair("sign", &sign)
        .finish();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("refresh_token", refresh_token.expose())
        .finish();
    Request::builder()
        .method(Method::POST)
        .uri(format!("{url}?{query}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Bytes::from(body))
        .map_err(|_| GrantError::Request("the token URL is not valid".to_owned()))
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    code: Value,
    #[serde(default)]
    message: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    expires_in: Value,
    #[serde(default)]
    refresh_expires_in: Value,
}

/// A number of seconds, sent as a JSON number or as text.
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses the IOP token answer; `expires_in` and `refresh_expires_in` are durations from `now`.
pub fn parse_grant(
    status: u16,
    body: &[u8],
    now: u64,
    consent_hint: &'static str,
) -> Result<Grant, GrantError> {
    let malformed = |reason: String| GrantError::Malformed { status, reason };
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not the gateway's JSON answer ({e})")))?;
    let code = match &answer.code {
        Value::String(code) => code.clone(),
        Value::Number(code) => code.to_string(),
        _ => String::new(),
    };
    // Success is `code` "0"; an answer with a token and no code at all is taken as one too.
    let success = code == "0" || (code.is_empty() && !answer.access_token.is_empty());
    if !success {
        let hint = match code.as_str() {
            "IllegalRefreshToken" | "InvalidRefreshToken" | "IllegalAccessToken" => consent_hint,
            "IncompleteSignature" => {
                " (the refresh request's signature was refused: check app_secret)"
            }
            "InvalidAppKey" | "AppKeyNotExist" => " (check app_key)",
            _ => "",
        };
        return Err(GrantError::Rejected {
            code: if code.is_empty() {
                format!("HTTP {status}")
            } else {
                code
            },
            message: answer.message,
            hint,
        });
    }
    if answer.access_token.is_empty() {
        return Err(malformed("code 0 but no access_token".to_owned()));
    }
    let expires_in = seconds(&answer.expires_in)
        .ok_or_else(|| malformed("no expires_in (seconds) in the answer".to_owned()))?;
    // `refresh_expires_in` 0: the token cannot be refreshed; no expiry is then known.
    let refresh_expires_at = seconds(&answer.refresh_expires_in)
        .filter(|s| *s > 0)
        .map(|s| now.saturating_add(s));
    Ok(Grant {
        access_token: Secret::new(answer.access_token),
        expires_at: now.saturating_add(expires_in),
        refresh_token: Some(answer.refresh_token)
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        refresh_expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: &str = " (authorize again)";

    #[test]
    fn refresh_request_is_a_signed_form_post_without_access_token() {
        let req = refresh_request(
            "https://auth.example.test/rest/auth/token/refresh",
            "123456",
            &Secret::new("helloworld"),
            &Secret::new("rt+/=1"),
            Timestamp::from_millis(1517820392000),
        )
        .unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.headers()[header::CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(req.body().as_ref(), b"refresh_token=rt%2B%2F%3D1");
        let sign = hmac_upper_hex(
            "helloworld",
            b"/auth/token/refreshapp_key123456refresh_tokenrt+/=1sign_methodsha256timestamp1517820392000",
        );
        assert_eq!(
            req.uri().to_string(),
            format!("https://auth.example.test/rest/auth/token/refresh?app_key=123456&sign_method=sha256&timestamp=1517820392000&sign={sign}")
        );
        assert!(!req.uri().to_string().contains("access_token"));
    }

    #[test]
    fn grant_durations_become_absolute_times() {
        let body = br#"{"access_token":"50000601c30atpedfgu3LVvik87Ixlsvle3mSoB7701ceb156fPunYZ43GBg","country":"sg","refresh_token":"500016000300bwa2WteaQyfwBMnPxurcA0mXGhQdTt18356663CfcDTYpWoi","account_platform":"seller_center","refresh_expires_in":2592000,"country_user_info":[],"expires_in":604800,"account":"a@b.c","code":"0","request_id":"0ba2887315178178017221014"}"#;
        let g = parse_grant(200, body, 1_000, HINT).unwrap();
        assert_eq!(
            g.access_token.expose(),
            "50000601c30atpedfgu3LVvik87Ixlsvle3mSoB7701ceb156fPunYZ43GBg"
        );
        assert_eq!(g.expires_at, 1_000 + 604_800);
        assert_eq!(
            g.refresh_token.unwrap().expose(),
            "500016000300bwa2WteaQyfwBMnPxurcA0mXGhQdTt18356663CfcDTYpWoi"
        );
        assert_eq!(g.refresh_expires_at, Some(1_000 + 2_592_000));
        let text = br#"{"access_token":"a","refresh_token":"r","expires_in":"60","refresh_expires_in":0,"code":"0"}"#;
        let g = parse_grant(200, text, 10, HINT).unwrap();
        assert_eq!(g.expires_at, 70);
        assert_eq!(g.refresh_expires_at, None);
    }

    #[test]
    fn refusals_carry_the_code_and_a_hint() {
        let e = parse_grant(
            200,
            br#"{"type":"ISV","code":"IllegalRefreshToken","message":"bad","request_id":"r"}"#,
            0,
            HINT,
        )
        .unwrap_err();
        assert_eq!(
            e,
            GrantError::Rejected {
                code: "IllegalRefreshToken".into(),
                message: "bad".into(),
                hint: HINT
            }
        );
        assert!(e.to_string().contains("authorize again"), "{e}");
        assert!(matches!(
            parse_grant(502, b"<html>", 0, HINT),
            Err(GrantError::Malformed { status: 502, .. })
        ));
        assert!(matches!(
            parse_grant(200, br#"{"code":"0"}"#, 0, HINT),
            Err(GrantError::Malformed { .. })
        ));
        assert!(matches!(
            parse_grant(200, br#"{"code":"0","access_token":"a"}"#, 0, HINT),
            Err(GrantError::Malformed { .. })
        ));
    }

    #[test]
    fn illegal_access_token_is_the_expired_answer() {
        let o = IopOAuth {
            policy: &super::super::sign::tests::POLICY,
            app_key: "k".into(),
            app_secret: Secret::new("s"),
            refresh_token: Secret::new("r"),
        };
        let s = StatusCode::OK;
        assert!(o.is_expired_answer(s, br#"{"type":"ISV","code":"IllegalAccessToken","message":"The specified access token is invalid or expired","request_id":"r"}"#));
        assert!(!o.is_expired_answer(s, br#"{"code":"IncompleteSignature"}"#));
        assert!(!o.is_expired_answer(s, b"nope"));
        assert!(o.refresh_expiry_carries_over());
        assert_ne!(
            o.seed(),
            IopOAuth {
                refresh_token: Secret::new("r2"),
                ..o
            }
            .seed()
        );
    }
}
