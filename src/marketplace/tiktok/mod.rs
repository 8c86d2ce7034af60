//! TikTok Shop: the `[tiktok.NAME]` table, its default host, the HMAC signer ([`sign`]), the
//! refresh-token OAuth ([`oauth`]), the signature doctor ([`doctor`]) and the offline stand-in
//! ([`sandbox`]).

pub mod doctor;
pub mod oauth;
pub mod sandbox;
pub mod sign;
pub mod webhook;

use std::sync::Arc;

use serde::Deserialize;

use super::{Marketplace, ProfileContext, ProfileError, ProfileParts};
use crate::secret::SecretRef;
use oauth::TiktokOAuth;
use sandbox::TiktokStandIn;
use sign::TiktokCredentials;

/// TikTok accepts a `timestamp` at most this old...
const TIMESTAMP_MAX_AGE_SECS: u64 = 300;
/// ...and at most this far ahead of its clock. The doctor judges by these, and the stand-in
/// refuses by them.
const TIMESTAMP_MAX_AHEAD_SECS: u64 = 30;

/// The registry's TikTok Shop.
pub static TIKTOK: Tiktok = Tiktok;

pub struct Tiktok;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiktok {
    app_key: String,
    app_secret: SecretRef,
    access_token: Option<SecretRef>,
    refresh_token: Option<SecretRef>,
    shop_cipher: Option<String>,
    hosts: Option<Vec<String>>,
}

impl Marketplace for Tiktok {
    fn id(&self) -> &'static str {
        "tiktok"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &["open-api.tiktokglobalshop.com"]
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        let raw: RawTiktok = cx.parse(table)?;
        if raw.app_key.trim().is_empty() {
            return Err(ProfileError::new(
                "app_key",
                "is empty: copy the App key from TikTok Shop Partner Center",
            ));
        }
        let creds = TiktokCredentials {
            app_key: raw.app_key,
            app_secret: cx.secret("app_secret", &raw.app_secret)?,
            shop_cipher: raw.shop_cipher.filter(|c| !c.is_empty()),
        };
        let token = cx.token_source(raw.access_token, raw.refresh_token, |refresh_token| {
            Arc::new(TiktokOAuth {
                app_key: creds.app_key.clone(),
                app_secret: creds.app_secret.clone(),
                refresh_token,
            })
        })?;
        Ok(ProfileParts {
            webhook: Some(Arc::new(webhook::TiktokWebhook {
                app_key: creds.app_key.clone(),
                app_secret: creds.app_secret.clone(),
            })),
            hosts: raw
                .hosts
                .unwrap_or_else(|| self.default_hosts().iter().map(|h| h.to_string()).collect()),
            stand_in: Arc::new(TiktokStandIn {
                app_key: creds.app_key.clone(),
                app_secret: creds.app_secret.clone(),
            }),
            signer: Arc::new(creds),
            token,
        })
    }
}
