//! eBay: the `[ebay.NAME]` table, its default hosts, RFC 9421 signing with Content-Digest
//! ([`sign`]), key loading ([`keys`]), OAuth ([`oauth`]), the signature doctor ([`doctor`]) and the
//! offline stand-in ([`sandbox`]).

pub mod create_key;
pub mod doctor;
pub mod keys;
pub mod oauth;
pub mod sandbox;
pub mod sign;
pub mod webhook;

use std::sync::Arc;

use serde::Deserialize;

use super::tool::Tool;
use super::{
    CredentialExpiry, Marketplace, ProfileContext, ProfileError, ProfileParts, Sign, TokenSource,
};
use crate::secret::SecretRef;
use keys::load_private_key;
use oauth::{EbayOAuth, EBAY_PRODUCTION_TOKEN_URL, EBAY_SANDBOX_TOKEN_URL};
use sandbox::{EbayStandIn, OAuthClient};
use sign::{EbayCredentials, Keyless};

/// How far `created` may lie from eBay's clock (its window is undocumented; "a few seconds" of
/// true time is safe): at most this old...
const CREATED_MAX_AGE_SECS: u64 = 300;
/// ...and at most this far ahead. The doctor judges by these, and the stand-in refuses by them.
const CREATED_MAX_AHEAD_SECS: u64 = 30;

/// The registry's eBay.
pub static EBAY: Ebay = Ebay;

pub struct Ebay;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEbay {
    private_key: Option<SecretRef>,
    jwe: Option<SecretRef>,
    /// eBay's `expirationTime` for the key (Unix seconds), as `create-key` prints it.
    key_expires_at: Option<u64>,
    access_token: Option<SecretRef>,
    client_id: Option<String>,
    client_secret: Option<SecretRef>,
    refresh_token: Option<SecretRef>,
    scopes: Option<Vec<String>>,
    token_url: Option<String>,
    hosts: Option<Vec<String>>,
    #[serde(default)]
    enforce_signature: bool,
}

impl Marketplace for Ebay {
    fn id(&self) -> &'static str {
        "ebay"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &[
            "api.ebay.com",
            "apiz.ebay.com",
            "api.sandbox.ebay.com",
            "apiz.sandbox.ebay.com",
        ]
    }

    fn tools(&self) -> &'static [&'static dyn Tool] {
        &create_key::TOOLS
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        let raw: RawEbay = cx.parse(table)?;
        let signing = match (&raw.private_key, &raw.jwe) {
            (Some(private_key), Some(jwe)) => {
                if raw
                    .key_expires_at
                    .is_some_and(|at| at > create_key::LATEST_EXPIRY)
                {
                    return Err(ProfileError::new(
                        "key_expires_at",
                        "is past the year 9999: give eBay's expirationTime in Unix seconds, not \
                         milliseconds",
                    ));
                }
                let key_text = cx.secret("private_key", private_key)?;
                let key = load_private_key(key_text.expose())
                    .map_err(|e| ProfileError::new("private_key", e.to_string()))?;
                Some((Arc::new(key), cx.secret("jwe", jwe)?))
            }
            (None, None) => {
                if raw.key_expires_at.is_some() {
                    return Err(ProfileError::new(
                        "key_expires_at",
                        "belongs with private_key and jwe",
                    ));
                }
                None
            }
            (Some(_), None) => return Err(ProfileError::new(
                "jwe",
                "is missing: private_key needs the jwe eBay's Key Management API returned with it",
            )),
            (None, Some(_)) => {
                return Err(ProfileError::new(
                    "private_key",
                    "is missing: jwe needs the private key it was created with",
                ))
            }
        };
        let hosts = raw
            .hosts
            .unwrap_or_else(|| self.default_hosts().iter().map(|h| h.to_string()).collect());
        // Sandbox-only profiles get sandbox tokens; anything else talks to production.
        let default_token_url = if hosts.iter().all(|h| h.contains(".sandbox.")) {
            EBAY_SANDBOX_TOKEN_URL
        } else {
            EBAY_PRODUCTION_TOKEN_URL
        };
        let fail = |key: &str, message: &str| ProfileError::new(key, message);
        // What the stand-in's token endpoint checks, when the profile has an OAuth client.
        let mut client = None;
        let mut token_url = default_token_url.to_owned();
        let token = match (raw.access_token, raw.client_id, raw.client_secret) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(fail(
                    "access_token",
                    "set either access_token (a static token) or client_id + client_secret (signproxy obtains and refreshes tokens), not both",
                ))
            }
            (Some(r), None, None) => TokenSource::Static(cx.secret("access_token", &r)?),
            (None, Some(client_id), Some(secret)) => {
                if client_id.trim().is_empty() {
                    return Err(fail(
                        "client_id",
                        "is empty: copy the App ID (Client ID) from eBay's developer portal",
                    ));
                }
                let configured_url = raw.token_url.unwrap_or_else(|| default_token_url.to_owned());
                let https = configured_url
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
                if !https {
                    return Err(ProfileError::new(
                        "token_url",
                        format!("`{configured_url}` is not an https:// URL"),
                    ));
                }
                let oauth = EbayOAuth {
                    client_id,
                    client_secret: cx.secret("client_secret", &secret)?,
                    refresh_token: raw
                        .refresh_token
                        .map(|r| cx.secret("refresh_token", &r))
                        .transpose()?,
                    scopes: raw.scopes.unwrap_or_default(),
                    token_url: configured_url,
                };
                client = Some(OAuthClient {
                    client_id: oauth.client_id.clone(),
                    client_secret: oauth.client_secret.clone(),
                });
                token_url.clone_from(&oauth.token_url);
                TokenSource::Managed(Arc::new(oauth))
            }
            (None, Some(_), None) => {
                return Err(fail(
                    "client_secret",
                    "is missing: client_id needs client_secret",
                ))
            }
            (None, None, Some(_)) => {
                return Err(fail(
                    "client_id",
                    "is missing: client_secret needs client_id",
                ))
            }
            (None, None, None) => {
                if raw.refresh_token.is_some() || raw.scopes.is_some() || raw.token_url.is_some()
                {
                    return Err(fail(
                        "client_id",
                        "refresh_token, scopes and token_url need client_id and client_secret",
                    ));
                }
                TokenSource::None
            }
        };
        let key_host = hosts
            .iter()
            .find(|h| !h.starts_with("apiz.") && !h.contains('*'))
            .cloned()
            .unwrap_or_else(|| "api.ebay.com".to_owned());
        let signer: Arc<dyn Sign> = match &signing {
            Some((key, jwe)) => Arc::new(EbayCredentials {
                key: Arc::clone(key),
                jwe: jwe.clone(),
                enforce_signature: raw.enforce_signature,
                expiry: raw.key_expires_at.map(|at| CredentialExpiry {
                    at,
                    what: "signing key",
                    renew: format!(
                        "create a new one with `signproxy ebay create-key --profile {} --force` \
                         and put the lines it prints in the profile",
                        cx.name
                    ),
                }),
            }),
            None => {
                cx.warn(format!(
                    "no signing key yet: its requests are refused until \
                     `signproxy ebay create-key --profile {name}` makes one",
                    name = cx.name
                ));
                Arc::new(Keyless {
                    name: cx.name.to_owned(),
                })
            }
        };
        Ok(ProfileParts {
            webhook: Some(Arc::new(webhook::EbayWebhook { key_host })),
            hosts,
            stand_in: Arc::new(EbayStandIn::new(signing, client, &token_url)),
            signer,
            token,
        })
    }
}
