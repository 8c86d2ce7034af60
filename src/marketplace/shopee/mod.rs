//! Shopee Open Platform v2: the `[shopee.NAME]` table, its hosts, the HMAC signer ([`sign`]),
//! the rotating refresh-token OAuth ([`oauth`]), the signature doctor ([`doctor`]) and the
//! offline stand-in ([`sandbox`]).

pub mod doctor;
pub mod oauth;
pub mod sandbox;
pub mod sign;
pub mod webhook;

use std::sync::Arc;

use serde::Deserialize;

use super::{Marketplace, ProfileContext, ProfileError, ProfileParts};
use crate::secret::SecretRef;
use oauth::ShopeeOAuth;
use sandbox::ShopeeStandIn;
use sign::{Account, ShopeeCredentials};

/// Shopee wants the request to arrive within 5 minutes of its `timestamp`, either way. The doctor
/// judges by this, and the stand-in refuses by it.
const TIMESTAMP_WINDOW_SECS: u64 = 300;

/// The production hosts (the first is the default).
pub const PRODUCTION_HOSTS: [&str; 3] = [
    "partner.shopeemobile.com",
    "openplatform.shopee.cn",
    "openplatform.shopee.com.br",
];
/// The sandbox hosts: test partner ids work only here.
pub const SANDBOX_HOSTS: [&str; 2] = [
    "openplatform.sandbox.test-stable.shopee.sg",
    "openplatform.sandbox.test-stable.shopee.cn",
];
/// Old sandbox hosts still quoted by SDKs and blogs: they accept the partner id and answer
/// `error_sign` to every signature, which sends people hunting for a signing bug that is not there.
pub const LEGACY_SANDBOX_HOSTS: [&str; 2] = [
    "partner.test-stable.shopeemobile.com",
    "partner.uat.shopeemobile.com",
];

/// The registry's Shopee.
pub static SHOPEE: Shopee = Shopee;

pub struct Shopee;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShopee {
    partner_id: u64,
    partner_key: SecretRef,
    shop_id: Option<u64>,
    merchant_id: Option<u64>,
    access_token: Option<SecretRef>,
    refresh_token: Option<SecretRef>,
    hosts: Option<Vec<String>>,
}

impl Marketplace for Shopee {
    fn id(&self) -> &'static str {
        "shopee"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &PRODUCTION_HOSTS[..1]
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        let raw: RawShopee = cx.parse(table)?;
        if raw.partner_id == 0 {
            return Err(ProfileError::new(
                "partner_id",
                "is 0: copy the Partner ID (an integer) from the app on Shopee Open Platform's console",
            ));
        }
        let account = match (raw.shop_id, raw.merchant_id) {
            (Some(_), Some(_)) => {
                return Err(ProfileError::new(
                    "merchant_id",
                    "set either shop_id (a shop's APIs) or merchant_id (a cross-border merchant's APIs), not both: Shopee keys each access token to one id, so give each id its own [shopee.NAME] profile",
                ))
            }
            (Some(shop), None) => Account::Shop(shop),
            (None, Some(merchant)) => Account::Merchant(merchant),
            (None, None) => Account::None,
        };
        let partner_key = cx.secret("partner_key", &raw.partner_key)?;
        if partner_key.expose().trim().is_empty() {
            return Err(ProfileError::new(
                "partner_key",
                "is empty: copy the Partner Key from the app on Shopee Open Platform's console (verbatim, `shpk` prefix included)",
            ));
        }
        let hosts: Vec<String> = raw
            .hosts
            .unwrap_or_else(|| self.default_hosts().iter().map(|h| h.to_string()).collect());
        for host in &hosts {
            if LEGACY_SANDBOX_HOSTS.contains(&host.to_ascii_lowercase().as_str()) {
                // Through the config's warnings: `check` prints them and `run` logs them once
                // logging is up (a tracing event here would precede it).
                cx.warn(format!(
                    "hosts lists `{host}`, an old Shopee sandbox host: it accepts the partner_id but answers error_sign (\"Wrong sign.\") to every signature; use {} instead",
                    SANDBOX_HOSTS[0]
                ));
            }
        }
        let token_host = token_host(&hosts);
        let creds = ShopeeCredentials {
            partner_id: raw.partner_id,
            partner_key,
            account,
        };
        // One token (two is the seam's error) belongs to one shop or merchant.
        if raw.access_token.is_some() != raw.refresh_token.is_some() && account == Account::None {
            return Err(ProfileError::new(
                "shop_id",
                "is missing: Shopee issues access and refresh tokens per shop_id or merchant_id, so a profile with a token needs the one it belongs to (without either, the profile signs Public APIs only)",
            ));
        }
        let token = cx.token_source(raw.access_token, raw.refresh_token, |refresh_token| {
            Arc::new(ShopeeOAuth {
                partner_id: creds.partner_id,
                partner_key: creds.partner_key.clone(),
                account,
                refresh_token,
                host: token_host.clone(),
            })
        })?;
        Ok(ProfileParts {
            webhook: Some(Arc::new(webhook::ShopeeWebhook {
                partner_key: creds.partner_key.clone(),
            })),
            hosts,
            stand_in: Arc::new(ShopeeStandIn {
                partner_id: creds.partner_id,
                partner_key: creds.partner_key.clone(),
                token_host,
            }),
            signer: Arc::new(creds),
            token,
        })
    }
}

/// Where the profile's tokens are refreshed: its first host that is a known Shopee API host
/// (production or sandbox: a test partner id refreshes on the sandbox), else the default host.
fn token_host(hosts: &[String]) -> String {
    hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .find(|h| PRODUCTION_HOSTS.contains(&h.as_str()) || SANDBOX_HOSTS.contains(&h.as_str()))
        .unwrap_or_else(|| PRODUCTION_HOSTS[0].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn load(text: &str) -> Result<ProfileParts, ProfileError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let resolve = |_: &str, r: &SecretRef| -> Result<Secret, ProfileError> {
            match r {
                SecretRef::Literal(s) => Ok(s.clone()),
                _ => Err(ProfileError::new("", "literal only in tests")),
            }
        };
        SHOPEE.profile(table, &ProfileContext::new("default", &resolve))
    }

    #[test]
    fn a_shop_profile_loads_with_the_default_host() {
        let p = load("partner_id = 2001887\npartner_key = \"shpk6d65\"\nshop_id = 14701711\nrefresh_token = \"rt\"\n").unwrap();
        assert_eq!(p.hosts, vec!["partner.shopeemobile.com".to_owned()]);
        assert!(p.token.is_managed());
        assert_eq!(
            p.signer.scheme(),
            "Shopee Open Platform v2 HMAC-SHA256 (partner 2001887)"
        );
    }

    #[test]
    fn both_ids_are_refused_naming_the_fix() {
        let e = load("partner_id = 1\npartner_key = \"k\"\nshop_id = 2\nmerchant_id = 3\n")
            .err()
            .unwrap();
        assert_eq!(e.key, "merchant_id");
        assert!(e.message.contains("not both"), "{}", e.message);
    }

    #[test]
    fn a_token_needs_an_id_and_only_one_kind_of_token() {
        let e = load("partner_id = 1\npartner_key = \"k\"\naccess_token = \"t\"\n")
            .err()
            .unwrap();
        assert_eq!(e.key, "shop_id");
        let e = load("partner_id = 1\npartner_key = \"k\"\nshop_id = 2\naccess_token = \"t\"\nrefresh_token = \"r\"\n")
            .err()
            .unwrap();
        assert_eq!(e.key, "refresh_token");
        // Neither id: allowed, for Public APIs only.
        assert!(load("partner_id = 1\npartner_key = \"k\"\n").is_ok());
    }

    #[test]
    fn ids_are_integers_and_unknown_keys_refused() {
        let e = load("partner_id = \"2001887\"\npartner_key = \"k\"\n")
            .err()
            .unwrap();
        assert_eq!(e.key, "partner_id");
        let e = load("partner_id = 1\npartner_key = \"k\"\napp_key = \"x\"\n")
            .err()
            .unwrap();
        assert!(e.message.contains("app_key"), "{}", e.message);
    }

    #[test]
    fn an_old_sandbox_host_is_warned_about_naming_the_right_one() {
        let warnings = std::cell::RefCell::new(Vec::new());
        let warn = |m: String| warnings.borrow_mut().push(m);
        let resolve = |_: &str, r: &SecretRef| -> Result<Secret, ProfileError> {
            match r {
                SecretRef::Literal(s) => Ok(s.clone()),
                _ => Err(ProfileError::new("", "literal only in tests")),
            }
        };
        let cx = ProfileContext::new("default", &resolve).with_warnings(&warn);
        let table = |hosts: &str| -> toml::Table {
            toml::from_str(&format!(
                "partner_id = 1\npartner_key = \"k\"\nhosts = {hosts}\n"
            ))
            .unwrap()
        };
        SHOPEE
            .profile(table(r#"["partner.shopeemobile.com"]"#), &cx)
            .unwrap();
        assert!(warnings.borrow().is_empty());
        SHOPEE
            .profile(
                table(r#"["partner.shopeemobile.com", "Partner.UAT.shopeemobile.com"]"#),
                &cx,
            )
            .unwrap();
        let shown = warnings.borrow().join("\n");
        assert!(
            shown.contains("error_sign")
                && shown.contains("openplatform.sandbox.test-stable.shopee.sg"),
            "{shown}"
        );
    }

    #[test]
    fn tokens_refresh_on_the_profiles_own_environment() {
        assert_eq!(
            token_host(&["openplatform.sandbox.test-stable.shopee.sg".into()]),
            "openplatform.sandbox.test-stable.shopee.sg"
        );
        assert_eq!(
            token_host(&["localhost".into(), "openplatform.shopee.cn".into()]),
            "openplatform.shopee.cn"
        );
        assert_eq!(
            token_host(&["partner.uat.shopeemobile.com".into()]),
            "partner.shopeemobile.com"
        );
    }
}
