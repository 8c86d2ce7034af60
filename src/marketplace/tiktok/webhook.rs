//! TikTok Shop webhooks: `Authorization` = hex HMAC-SHA256(app_secret, app_key ‖ raw body);
//! 401 with an empty body on failure; the event id is `tts_notification_id`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::marketplace::webhook::{
    hex_exact, hmac_sha256_hex, hmac_sha256_matches, spoil, PublicKey, Refusal, TestEvent, Webhook,
    WebhookRoute,
};
use crate::marketplace::{ProfileContext, ProfileError};
use crate::secret::Secret;

/// TikTok wants an answer within 3 s.
const DEADLINE: Duration = Duration::from_millis(2_500);

#[derive(Debug, Clone)]
pub struct TiktokWebhook {
    pub app_key: String,
    pub app_secret: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {}

impl Webhook for TiktokWebhook {
    fn route(
        &self,
        fields: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<Arc<dyn WebhookRoute>, ProfileError> {
        let RawRoute {} = cx.parse(fields)?;
        Ok(Arc::new(self.clone()))
    }
}

#[derive(Deserialize)]
struct Envelope {
    tts_notification_id: serde_json::Value,
}

impl WebhookRoute for TiktokWebhook {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        _key: Option<&PublicKey>,
    ) -> Result<String, Refusal> {
        let Some(given) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Refusal::Unsigned);
        };
        let given = given
            .to_str()
            .ok()
            .and_then(|text| hex_exact(text, 32))
            .ok_or(Refusal::Malformed)?;
        if !hmac_sha256_matches(
            self.app_secret.expose().as_bytes(),
            &[self.app_key.as_bytes(), body],
            &given,
        ) {
            return Err(Refusal::Forged);
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| Refusal::Malformed)?;
        match envelope.tts_notification_id {
            serde_json::Value::String(id) if !id.is_empty() => Ok(id),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(Refusal::Malformed),
        }
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn refusal_status(&self, refusal: Refusal) -> StatusCode {
        match refusal {
            Refusal::Unsigned | Refusal::Forged => StatusCode::UNAUTHORIZED,
            Refusal::Malformed => StatusCode::BAD_REQUEST,
        }
    }

    fn default_deadline(&self) -> Duration {
        DEADLINE
    }

    fn test_event(
        &self,
        event_type: &str,
        unique: u64,
        now_secs: u64,
        forged: bool,
    ) -> Result<TestEvent, String> {
        let kind = event_type_number(event_type)?;
        let body = serde_json::json!({
            "type": kind,
            "tts_notification_id": unique.to_string(),
            "shop_id": "7495540735365777507",
            "timestamp": now_secs,
            "data": {"order_id": "576653688135258178", "order_status": "UNPAID", "update_time": now_secs},
        })
        .to_string()
        .into_bytes();
        let mut signature = hmac_sha256_hex(
            self.app_secret.expose().as_bytes(),
            &[self.app_key.as_bytes(), &body],
        );
        if forged {
            signature = spoil(&signature);
        }
        Ok(TestEvent {
            method: http::Method::POST,
            query: None,
            headers: vec![
                ("authorization".to_owned(), signature),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body,
        })
    }
}

/// TikTok's `type` for an event name (`ORDER_STATUS_CHANGE`) or number.
fn event_type_number(name: &str) -> Result<u32, String> {
    const TYPES: [(&str, u32); 9] = [
        ("ORDER_STATUS_CHANGE", 1),
        ("RECIPIENT_ADDRESS_UPDATE", 3),
        ("PACKAGE_UPDATE", 4),
        ("PRODUCT_STATUS_CHANGE", 5),
        ("SELLER_DEAUTHORIZATION", 6),
        ("UPCOMING_AUTHORIZATION_EXPIRATION", 7),
        ("CANCELLATION_STATUS_CHANGE", 11),
        ("RETURN_STATUS_CHANGE", 12),
        ("PRODUCT_AUDIT_STATUS_CHANGE", 37),
    ];
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            format!(
                "unknown TikTok event type `{name}`: use a number or one of {}",
                TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":1,"tts_notification_id":"7380066284010030890","shop_id":"7495540735365777507","timestamp":1718305585,"data":{"is_on_hold_order":true,"order_id":"576653688135258178","order_status":"UNPAID","update_time":1718305585}}"#;
    const SIGNATURE: &str = "5dec0f11ec2f6783b8deee53c9ffbf8d024302f7c7e7fa55a35d17629031ac05";

    fn hook() -> TiktokWebhook {
        TiktokWebhook {
            app_key: "abcdef".into(),
            app_secret: Secret::new("123"),
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_official_vector_verifies_and_yields_the_notification_id() {
        let got = hook().verify(&headers(Some(SIGNATURE)), BODY.as_bytes(), None);
        assert_eq!(got, Ok("7380066284010030890".to_owned()));
        // Either case of hex.
        let upper = SIGNATURE.to_ascii_uppercase();
        assert!(hook()
            .verify(&headers(Some(&upper)), BODY.as_bytes(), None)
            .is_ok());
    }

    #[test]
    fn known_mistakes_and_tampering_are_refused() {
        let h = hook();
        let tampered = BODY.replace("UNPAID", "AWAITING_SHIPMENT");
        assert_eq!(
            h.verify(&headers(Some(SIGNATURE)), tampered.as_bytes(), None),
            Err(Refusal::Forged)
        );
        assert_eq!(
            h.verify(&headers(None), BODY.as_bytes(), None),
            Err(Refusal::Unsigned)
        );
        let bearer = format!("Bearer {SIGNATURE}");
        assert_eq!(
            h.verify(&headers(Some(&bearer)), BODY.as_bytes(), None),
            Err(Refusal::Malformed)
        );
        // The page's sample curl signature matches nothing.
        let sample = "46c0d0a3".repeat(8);
        assert_eq!(
            h.verify(&headers(Some(&sample)), BODY.as_bytes(), None),
            Err(Refusal::Forged)
        );
        // Signing the body alone (no app_key) is a different MAC.
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"123").unwrap();
        mac.update(BODY.as_bytes());
        let body_only = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            h.verify(&headers(Some(&body_only)), BODY.as_bytes(), None),
            Err(Refusal::Forged)
        );
        // Another secret.
        let other = TiktokWebhook {
            app_key: "abcdef".into(),
            app_secret: Secret::new("124"),
        };
        assert_eq!(
            other.verify(&headers(Some(SIGNATURE)), BODY.as_bytes(), None),
            Err(Refusal::Forged)
        );
    }

    #[test]
    fn test_events_carry_the_mac_of_app_key_and_body() {
        let event = hook()
            .test_event("ORDER_STATUS_CHANGE", 99, 1_700_000_000, false)
            .unwrap();
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"123").unwrap();
        mac.update(b"abcdef");
        mac.update(&event.body);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            event.headers[0],
            ("authorization".to_owned(), expected.clone())
        );
        let json: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(json["type"], 1);
        assert_eq!(json["tts_notification_id"], "99");
        let forged = hook().test_event("1", 99, 1_700_000_000, true).unwrap();
        assert_ne!(forged.headers[0].1, expected);
        assert!(hook().test_event("NO_SUCH_EVENT", 1, 1, false).is_err());
    }

    #[test]
    fn a_signed_body_without_an_event_id_is_malformed() {
        let body = br#"{"type":1}"#;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"123").unwrap();
        hmac::Mac::update(&mut mac, b"abcdef");
        hmac::Mac::update(&mut mac, body);
        let sig = hex::encode(hmac::Mac::finalize(mac).into_bytes());
        assert_eq!(
            hook().verify(&headers(Some(&sig)), body, None),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            hook().refusal_status(Refusal::Forged),
            StatusCode::UNAUTHORIZED
        );
    }
}
