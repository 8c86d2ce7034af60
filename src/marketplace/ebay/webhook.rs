//! eBay notifications: `X-EBAY-SIGNATURE` (base64 JSON naming `kid` and a DER ECDSA signature)
//! verified with P-256 and the digest the key names (SHA-1) over the raw body, the key fetched by
//! `kid` from the Notification API; 412 on a bad signature, 204 acknowledges; the endpoint
//! challenge (`GET ?challenge_code=`) answered from the verification token and endpoint.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use crate::marketplace::webhook::{Answer, PublicKey, Refusal, TestEvent, Webhook, WebhookRoute};
use crate::marketplace::{ProfileContext, ProfileError};
use crate::secret::{Secret, SecretRef};

/// eBay states no answer deadline; it retries what fails.
const DEADLINE: Duration = Duration::from_secs(5);
pub const SIGNATURE_HEADER: &str = "x-ebay-signature";

#[derive(Debug, Clone)]
pub struct EbayWebhook {
    /// Where the Notification API's public keys are fetched (`api.ebay.com` or the sandbox's).
    pub key_host: String,
}

#[derive(Debug)]
struct EbayRoute {
    key_host: String,
    verification_token: Secret,
    endpoint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    verification_token: SecretRef,
    endpoint: String,
}

impl Webhook for EbayWebhook {
    fn route(
        &self,
        fields: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<Arc<dyn WebhookRoute>, ProfileError> {
        let raw: RawRoute = cx.parse(fields)?;
        let token = cx.secret("verification_token", &raw.verification_token)?;
        let t = token.expose();
        if !(32..=80).contains(&t.len())
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ProfileError::new(
                "verification_token",
                "must be 32 to 80 characters of A-Z, a-z, 0-9, `_` and `-`, as eBay requires",
            ));
        }
        if !raw.endpoint.starts_with("https://") {
            return Err(ProfileError::new(
                "endpoint",
                "must be the https:// URL registered with eBay, exactly as registered",
            ));
        }
        Ok(Arc::new(EbayRoute {
            key_host: self.key_host.clone(),
            verification_token: token,
            endpoint: raw.endpoint,
        }))
    }
}

/// The eBay endpoint challenge answer: lowercase hex SHA-256 of code ‖ token ‖ endpoint.
pub fn challenge_response(code: &str, token: &str, endpoint: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(code.as_bytes());
    hash.update(token.as_bytes());
    hash.update(endpoint.as_bytes());
    hex::encode(hash.finalize())
}

#[derive(Deserialize)]
struct SignatureHeader {
    alg: String,
    kid: String,
    signature: String,
    #[serde(default)]
    digest: Option<String>,
}

fn parse_header(headers: &HeaderMap) -> Result<SignatureHeader, Refusal> {
    let value = headers.get(SIGNATURE_HEADER).ok_or(Refusal::Unsigned)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes().trim_ascii())
        .map_err(|_| Refusal::Malformed)?;
    let header: SignatureHeader =
        serde_json::from_slice(&decoded).map_err(|_| Refusal::Malformed)?;
    let kid_ok = !header.kid.is_empty()
        && header.kid.len() <= 64
        && header
            .kid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !kid_ok || !header.alg.eq_ignore_ascii_case("ecdsa") {
        return Err(Refusal::Malformed);
    }
    Ok(header)
}

#[derive(Deserialize)]
struct Envelope {
    notification: Notification,
}

#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "notificationId")]
    notification_id: String,
}

/// Whether `signature` (base64 DER, high-S accepted) is `key`'s ECDSA P-256 signature over the
/// SHA-1 digest of `body`.
pub fn verify_ecdsa_sha1(spki_der: &[u8], signature_b64: &str, body: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;
    use sha1::Digest;
    let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der) else {
        return false;
    };
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(signature) = p256::ecdsa::Signature::from_der(&der) else {
        return false;
    };
    key.verify_prehash(&sha1::Sha1::digest(body), &signature)
        .is_ok()
}

impl WebhookRoute for EbayRoute {
    fn key_id(&self, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
        parse_header(headers).map(|h| Some(h.kid))
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        key: Option<&PublicKey>,
    ) -> Result<String, Refusal> {
        let header = parse_header(headers)?;
        let key = key.ok_or(Refusal::Malformed)?;
        let digest_ok = key.digest.eq_ignore_ascii_case("SHA1")
            && header
                .digest
                .as_deref()
                .map_or(true, |d| d.eq_ignore_ascii_case("SHA1"));
        if !digest_ok {
            return Err(Refusal::Malformed);
        }
        if !verify_ecdsa_sha1(&key.spki_der, &header.signature, body) {
            return Err(Refusal::Forged);
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| Refusal::Malformed)?;
        let id = envelope.notification.notification_id;
        if id.is_empty() {
            return Err(Refusal::Malformed);
        }
        Ok(id)
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE_HEADER]
    }

    fn refusal_status(&self, _refusal: Refusal) -> StatusCode {
        StatusCode::PRECONDITION_FAILED
    }

    fn duplicate_status(&self) -> StatusCode {
        StatusCode::NO_CONTENT
    }

    fn default_deadline(&self) -> Duration {
        DEADLINE
    }

    fn self_answer(&self, method: &Method, query: Option<&str>) -> Option<Answer> {
        if method != Method::GET {
            return None;
        }
        let code = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "challenge_code")
            .map(|(_, v)| v.into_owned());
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Some(Answer {
                status: StatusCode::BAD_REQUEST,
                content_type: None,
                body: Vec::new(),
            });
        };
        let response = challenge_response(&code, self.verification_token.expose(), &self.endpoint);
        Some(Answer {
            status: StatusCode::OK,
            content_type: Some("application/json"),
            body: serde_json::json!({ "challengeResponse": response })
                .to_string()
                .into_bytes(),
        })
    }

    fn key_request(&self, kid: &str, app_token: &Secret) -> Result<http::Request<Bytes>, String> {
        http::Request::get(format!(
            "https://{}/commerce/notification/v1/public_key/{kid}",
            self.key_host
        ))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", app_token.expose()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|_| "cannot build the public key request".to_owned())
    }

    fn parse_key(&self, status: StatusCode, body: &[u8]) -> Result<PublicKey, String> {
        parse_key_answer(status, body)
    }

    /// eBay signs with its own private key, so the test is the endpoint challenge.
    fn test_event(
        &self,
        _event_type: &str,
        unique: u64,
        _now_secs: u64,
        _forged: bool,
    ) -> Result<TestEvent, String> {
        Ok(TestEvent {
            method: Method::GET,
            query: Some(format!("challenge_code=signproxy-test-{unique}")),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }
}

#[derive(Deserialize)]
struct KeyAnswer {
    key: String,
    #[serde(default)]
    digest: Option<String>,
}

/// The key in the Notification API's `public_key` answer: a PEM whose base64 may come without
/// newlines.
pub fn parse_key_answer(status: StatusCode, body: &[u8]) -> Result<PublicKey, String> {
    use p256::pkcs8::DecodePublicKey;
    if !status.is_success() {
        return Err(format!("the Notification API answered {status}"));
    }
    let answer: KeyAnswer = serde_json::from_slice(body)
        .map_err(|_| "the Notification API's key answer is not the expected JSON".to_owned())?;
    let inner = answer
        .key
        .replace("-----BEGIN PUBLIC KEY-----", "")
        .replace("-----END PUBLIC KEY-----", "");
    let b64: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let spki_der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the Notification API's key is not base64".to_owned())?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
        .map_err(|_| "the Notification API's key is not a P-256 public key".to_owned())?;
    Ok(PublicKey {
        spki_der,
        digest: answer.digest.unwrap_or_else(|| "SHA1".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZhhxXKtR+TOvtDbgTPCkSof02qgBB7IsYOyf76ilExJ/upAa/vKIKheOoCyOpcLmi4t0b4uepb7LLjmMr90FUg==";
    pub const HEADER: &str = "eyJhbGciOiJlY2RzYSIsImtpZCI6Ijk5MzYyNjFhLTdkN2ItNDYyMS1hMGYxLTk2Y2NiNDI4YWY0OSIsInNpZ25hdHVyZSI6Ik1FWUNJUUNmeGZJV3V4bVdjSUJRSjljNS9YN2lHREpxczJSQ0dzQkVhQWppbnlycmZBSWhBSVY2d0djVGlCdVY1S0pVaWYyaG9reXJMK1E5c3NIa2FkK214Mm5FRTI1dyIsImRpZ2VzdCI6IlNIQTEifQ==";
    pub const BODY: &str = r#"{"metadata":{"topic":"MARKETPLACE_ACCOUNT_DELETION","schemaVersion":"1.0","deprecated":false},"notification":{"notificationId":"49feeaeb-4982-42d9-a377-9645b8479411_33f7e043-fed8-442b-9d44-791923bd9a6d","eventDate":"2021-03-19T20:43:59.462Z","publishDate":"2021-03-19T20:43:59.679Z","publishAttemptCount":1,"data":{"username":"test_user","userId":"ma8vp1jySJC","eiasToken":"nY+sHZ2PrBmdj6wVnY+sEZ2PrA2dj6wJnY+gAZGEpwmdj6x9nY+seQ=="}}}"#;

    fn route() -> EbayRoute {
        EbayRoute {
            key_host: "api.ebay.com".into(),
            verification_token: Secret::new("a".repeat(40)),
            endpoint: "https://hooks.example.com/webhooks/ebay".into(),
        }
    }

    fn key() -> PublicKey {
        let answer = format!(
            r#"{{"key":"-----BEGIN PUBLIC KEY-----{KEY}-----END PUBLIC KEY-----","algorithm":"ECDSA","digest":"SHA1"}}"#
        );
        parse_key_answer(StatusCode::OK, answer.as_bytes()).unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, value.parse().unwrap());
        h
    }

    #[test]
    fn the_official_vector_verifies_and_a_tampered_body_does_not() {
        let r = route();
        assert_eq!(
            r.key_id(&headers(HEADER)),
            Ok(Some("9936261a-7d7b-4621-a0f1-96ccb428af49".to_owned()))
        );
        assert_eq!(
            r.verify(&headers(HEADER), BODY.as_bytes(), Some(&key())),
            Ok(
                "49feeaeb-4982-42d9-a377-9645b8479411_33f7e043-fed8-442b-9d44-791923bd9a6d"
                    .to_owned()
            )
        );
        let tampered = BODY.replace("\"test_user\"", "\"test_user2\"");
        assert_eq!(
            r.verify(&headers(HEADER), tampered.as_bytes(), Some(&key())),
            Err(Refusal::Forged)
        );
    }

    #[test]
    fn wrong_digests_and_headers_are_refused() {
        let r = route();
        let mut sha256_key = key();
        sha256_key.digest = "SHA256".into();
        assert_eq!(
            r.verify(&headers(HEADER), BODY.as_bytes(), Some(&sha256_key)),
            Err(Refusal::Malformed)
        );
        assert_eq!(r.key_id(&HeaderMap::new()), Err(Refusal::Unsigned));
        assert_eq!(r.key_id(&headers("not-base64!")), Err(Refusal::Malformed));
        // A kid that would walk the key URL elsewhere.
        let sneaky = base64::engine::general_purpose::STANDARD
            .encode(r#"{"alg":"ecdsa","kid":"../../x","signature":"AA==","digest":"SHA1"}"#);
        assert_eq!(r.key_id(&headers(&sneaky)), Err(Refusal::Malformed));
        assert_eq!(
            r.refusal_status(Refusal::Forged),
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn the_challenge_is_sha256_of_code_token_endpoint() {
        use sha2::{Digest, Sha256};
        let r = route();
        let answer = r
            .self_answer(&Method::GET, Some("challenge_code=abc%2B1"))
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let expected = hex::encode(Sha256::digest(
            format!(
                "abc+1{}https://hooks.example.com/webhooks/ebay",
                "a".repeat(40)
            )
            .as_bytes(),
        ));
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(json["challengeResponse"], expected.as_str());
        assert!(r.self_answer(&Method::POST, None).is_none());
    }
}
