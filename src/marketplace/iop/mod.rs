//! The IOP gateway protocol, shared by the marketplaces that speak it: the profile table
//! (`app_key`, `app_secret`, tokens, hosts), the HMAC-SHA256 signer ([`sign`]), the bounded
//! multipart reader it signs text fields with ([`multipart`]), the refresh-token endpoint
//! ([`oauth`]), the doctor ([`doctor`]) and the offline stand-in ([`sandbox`]). Each marketplace
//! folder brings an [`IopPolicy`]: its name, its token endpoint and whether `/sync` is served.

pub mod doctor;
pub mod multipart;
pub mod oauth;
pub mod sandbox;
pub mod sign;

use std::sync::Arc;

use serde::Deserialize;

use super::{ProfileContext, ProfileError, ProfileParts};
use crate::secret::SecretRef;
use oauth::IopOAuth;
use sandbox::IopStandIn;
use sign::IopCredentials;

/// The gateway accepts a `timestamp` within this many seconds of its clock, either way. The
/// doctor judges by it and the stand-in refuses by it.
pub const TIMESTAMP_WINDOW_SECS: u64 = 7200;

/// What differs between the marketplaces on the IOP gateway. A `static` in each folder.
#[derive(Debug)]
pub struct IopPolicy {
    /// The config table (`[ID.NAME]`): also the store's fingerprint tag.
    pub id: &'static str,
    /// How messages name the marketplace.
    pub display: &'static str,
    /// Business APIs at `POST /sync` (name in `method`) are signed with no path prefix.
    pub sync_without_prefix: bool,
    /// Where `/auth/token/refresh` lives: `https://HOST/rest/auth/token/refresh`.
    pub refresh_url: &'static str,
    /// The host of the token endpoint (for `check`, the stand-in and `sandbox serve`).
    pub token_host: &'static str,
    /// A refresh returns a new refresh token that expires when the old one would have: its
    /// lifetime is not renewed, so the earlier expiry is kept.
    pub refresh_expiry_carries_over: bool,
    /// Where a user authorizes again when the refresh token runs out (for messages).
    pub consent_hint: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIop {
    app_key: String,
    app_secret: SecretRef,
    access_token: Option<SecretRef>,
    refresh_token: Option<SecretRef>,
    hosts: Option<Vec<String>>,
}

/// Builds a profile of a marketplace on the IOP gateway from its table.
pub fn profile(
    policy: &'static IopPolicy,
    default_hosts: &'static [&'static str],
    table: toml::Table,
    cx: &ProfileContext<'_>,
) -> Result<ProfileParts, ProfileError> {
    let raw: RawIop = cx.parse(table)?;
    if raw.app_key.trim().is_empty() {
        return Err(ProfileError::new(
            "app_key",
            format!(
                "is empty: copy the App Key from the {} Open Platform console",
                policy.display
            ),
        ));
    }
    let creds = IopCredentials {
        policy,
        app_key: raw.app_key,
        app_secret: cx.secret("app_secret", &raw.app_secret)?,
    };
    let token = cx.token_source(raw.access_token, raw.refresh_token, |refresh_token| {
        Arc::new(IopOAuth {
            policy,
            app_key: creds.app_key.clone(),
            app_secret: creds.app_secret.clone(),
            refresh_token,
        })
    })?;
    Ok(ProfileParts {
        webhook: None,
        hosts: raw
            .hosts
            .unwrap_or_else(|| default_hosts.iter().map(|h| h.to_string()).collect()),
        stand_in: Arc::new(IopStandIn {
            policy,
            app_key: creds.app_key.clone(),
            app_secret: creds.app_secret.clone(),
        }),
        signer: Arc::new(creds),
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::{SandboxRequest, TokenSource};
    use crate::secret::Secret;

    fn build(text: &str) -> Result<ProfileParts, ProfileError> {
        let resolve = |_key: &str, source: &SecretRef| match source {
            SecretRef::Literal(secret) => Ok(secret.clone()),
            _ => Err(ProfileError::new("", "literal secrets only in this test")),
        };
        let cx = ProfileContext::new("default", &resolve);
        let table: toml::Table = text.parse().unwrap();
        profile(
            &sign::tests::POLICY,
            &["a.example.test", "b.example.test"],
            table,
            &cx,
        )
    }

    #[test]
    fn the_table_gives_hosts_tokens_and_a_stand_in_for_the_app() {
        let parts = build("app_key = \"k\"\napp_secret = \"s\"\nrefresh_token = \"r\"\n")
            .ok()
            .unwrap();
        assert_eq!(parts.hosts, ["a.example.test", "b.example.test"]);
        assert!(parts.token.is_managed());
        assert_eq!(parts.stand_in.token_hosts(), ["auth.example.test"]);
        let req = |query: &str, form: &str| SandboxRequest {
            method: http::Method::POST,
            host: "a.example.test".into(),
            authority: "a.example.test".into(),
            path: "/rest/x".into(),
            query: Some(query.into()),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(form.to_owned()),
        };
        assert!(parts.stand_in.claims(&req("app_key=k", "")));
        assert!(parts.stand_in.claims(&req("", "app_key=k&a=1")));
        assert!(!parts.stand_in.claims(&req("app_key=other", "")));

        let own = build("app_key = \"k\"\napp_secret = \"s\"\naccess_token = \"t\"\nhosts = [\"c.example.test\"]\n").ok().unwrap();
        assert_eq!(own.hosts, ["c.example.test"]);
        assert!(matches!(own.token, TokenSource::Static(ref t) if *t == Secret::new("t")));
    }

    #[test]
    fn mistakes_in_the_table_name_their_key() {
        for (text, key, says) in [
            ("app_key = \"k\"\napp_secret = \"s\"\naccess_token = \"t\"\nrefresh_token = \"r\"\n", "refresh_token", "not both"),
            ("app_key = \" \"\napp_secret = \"s\"\n", "app_key", "is empty"),
            ("app_key = \"k\"\napp_secret = \"s\"\nshop_cipher = \"x\"\n", "", "unknown field"),
        ] {
            let e = build(text).err().unwrap();
            assert!(e.key == key && e.message.contains(says), "{text}: {e:?}");
        }
    }
}
