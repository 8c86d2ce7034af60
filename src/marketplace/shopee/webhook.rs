//! Shopee push verification: `Authorization` = hex HMAC-SHA256(partner_key, callback_url ‖ `|`
//! ‖ raw body), with the public callback URL exactly as registered; 2xx with an empty body
//! acknowledges. Pushes carry no id of their own, so the event id is a digest of the signed body
//! (a retry repeats the same bytes).

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

/// Shopee's set-up test push wants an answer within 3 s.
const DEADLINE: Duration = Duration::from_millis(2_500);

#[derive(Debug, Clone)]
pub struct ShopeeWebhook {
    pub partner_key: Secret,
}

#[derive(Debug)]
struct ShopeeRoute {
    partner_key: Secret,
    callback_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    callback_url: String,
}

impl Webhook for ShopeeWebhook {
    fn route(
        &self,
        fields: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<Arc<dyn WebhookRoute>, ProfileError> {
        let raw: RawRoute = cx.parse(fields)?;
        let url = raw.callback_url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ProfileError::new(
                "callback_url",
                "must be the public push URL exactly as registered on Shopee Open Platform (https://...)",
            ));
        }
        Ok(Arc::new(ShopeeRoute {
            partner_key: self.partner_key.clone(),
            callback_url: raw.callback_url,
        }))
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    msg_id: Option<serde_json::Value>,
}

impl WebhookRoute for ShopeeRoute {
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
            self.partner_key.expose().as_bytes(),
            &[self.callback_url.as_bytes(), b"|", body],
            &given,
        ) {
            return Err(Refusal::Forged);
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|_| Refusal::Malformed)?;
        match envelope.msg_id {
            Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(id),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => {
                use sha2::{Digest, Sha256};
                Ok(format!(
                    "sha256:{}",
                    hex::encode(&Sha256::digest(body)[..16])
                ))
            }
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
        let code: u32 = event_type.parse().map_err(|_| {
            format!("Shopee push types are numbers (the push `code`, such as 3 for order status), not `{event_type}`")
        })?;
        let body = serde_json::json!({
            "msg_id": format!("signproxy-test-{unique}"),
            "shop_id": 600001,
            "code": code,
            "timestamp": now_secs,
            "data": {"ordersn": "2406130001", "status": "READY_TO_SHIP", "update_time": now_secs},
        })
        .to_string()
        .into_bytes();
        let mut signature = hmac_sha256_hex(
            self.partner_key.expose().as_bytes(),
            &[self.callback_url.as_bytes(), b"|", &body],
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

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    const URL: &str = "https://hooks.example.com/webhooks/shopee";
    const BODY: &[u8] = br#"{"shop_id":600001,"code":3,"timestamp":1718305585,"data":{"ordersn":"2406130001","status":"READY_TO_SHIP"}}"#;

    fn route() -> ShopeeRoute {
        ShopeeRoute {
            partner_key: Secret::new("shpk-test-key"),
            callback_url: URL.into(),
        }
    }

    /// An independent signer: HMAC over the given message bytes.
    fn mac(key: &str, message: &[u8]) -> String {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        m.update(message);
        hex::encode(m.finalize().into_bytes())
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn url_pipe_body_verifies_and_mistakes_do_not() {
        let message = [URL.as_bytes(), b"|", BODY].concat();
        let good = mac("shpk-test-key", &message);
        let id = route().verify(&headers(&good), BODY, None).unwrap();
        use sha2::{Digest, Sha256};
        assert_eq!(
            id,
            format!("sha256:{}", hex::encode(&Sha256::digest(BODY)[..16]))
        );
        // Omitting the `|`.
        let no_pipe = mac("shpk-test-key", &[URL.as_bytes(), BODY].concat());
        assert_eq!(
            route().verify(&headers(&no_pipe), BODY, None),
            Err(Refusal::Forged)
        );
        // The URL as seen behind TLS termination.
        let behind = mac(
            "shpk-test-key",
            &[
                b"http://127.0.0.1:8081/webhooks/shopee".as_slice(),
                b"|",
                BODY,
            ]
            .concat(),
        );
        assert_eq!(
            route().verify(&headers(&behind), BODY, None),
            Err(Refusal::Forged)
        );
        // A tampered body.
        let tampered = [&BODY[..BODY.len() - 2], b"X}"].concat();
        assert_eq!(
            route().verify(&headers(&good), &tampered, None),
            Err(Refusal::Forged)
        );
        assert_eq!(
            route().verify(&HeaderMap::new(), BODY, None),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            route().verify(&headers("zz"), BODY, None),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn a_msg_id_is_the_event_id() {
        let body = br#"{"msg_id":"abc-1","shop_id":1,"code":3,"timestamp":1,"data":{}}"#;
        let sig = mac("shpk-test-key", &[URL.as_bytes(), b"|", body].concat());
        assert_eq!(
            route().verify(&headers(&sig), body, None),
            Ok("abc-1".to_owned())
        );
    }
}
