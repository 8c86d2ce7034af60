//! Amazon Selling Partner API: the `[amazon.NAME]` table, its default hosts, the token
//! placement and restricted-operation table ([`sign`]), LWA grants and the RDT mint
//! ([`oauth`]), the doctor ([`doctor`]) and the offline stand-in ([`sandbox`]).

pub mod doctor;
pub mod oauth;
pub mod sandbox;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{Marketplace, ProfileContext, ProfileError, ProfileParts, TokenSource};
use crate::secret::SecretRef;
use oauth::{AmazonLwa, LWA_TOKEN_URL};
use sandbox::AmazonStandIn;
use sign::{AmazonSigner, RESTRICTED_OPERATIONS};

/// The registry's Amazon SP-API.
pub static AMAZON: Amazon = Amazon;

pub struct Amazon;

/// The regional production hosts; the sandbox hosts are these with `sandbox.` in front.
pub const PRODUCTION_HOSTS: [&str; 3] = [
    "sellingpartnerapi-na.amazon.com",
    "sellingpartnerapi-eu.amazon.com",
    "sellingpartnerapi-fe.amazon.com",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmazon {
    client_id: String,
    client_secret: SecretRef,
    refresh_token: Option<SecretRef>,
    scopes: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    token_url: Option<String>,
    /// Data elements per restricted operation name (`getOrders = ["buyerInfo"]`).
    #[serde(default)]
    data_elements: BTreeMap<String, Vec<String>>,
    /// Mint RDTs for getReportDocument (only restricted report types need one).
    #[serde(default)]
    restricted_reports: bool,
}

impl Marketplace for Amazon {
    fn id(&self) -> &'static str {
        "amazon"
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &PRODUCTION_HOSTS
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        let raw: RawAmazon = cx.parse(table)?;
        let fail = |key: &str, message: String| ProfileError::new(key, message);
        if raw.client_id.trim().is_empty() {
            return Err(fail(
                "client_id",
                "is empty: copy the LWA client identifier (amzn1.application-oa2-client.…) from the app's LWA credentials".to_owned(),
            ));
        }
        let scopes = raw.scopes.unwrap_or_default();
        let refresh_token = match (raw.refresh_token, scopes.is_empty()) {
            (Some(_), false) => {
                return Err(fail(
                    "scopes",
                    "set either refresh_token (seller-authorized calls) or scopes (grantless calls), not both: make a second profile for grantless operations".to_owned(),
                ))
            }
            (None, true) => {
                return Err(fail(
                    "refresh_token",
                    "is missing: set the seller's LWA refresh token (Atzr|…), or scopes for grantless operations".to_owned(),
                ))
            }
            (Some(r), true) => Some(cx.secret("refresh_token", &r)?),
            (None, false) => None,
        };
        if let Some(scope) = scopes
            .iter()
            .find(|s| !s.starts_with("sellingpartnerapi::"))
        {
            return Err(fail(
                "scopes",
                format!("`{scope}` is not a grantless SP-API scope (sellingpartnerapi::notifications, sellingpartnerapi::client_credential:rotation, sellingpartnerapi::migration)"),
            ));
        }
        for (operation, elements) in &raw.data_elements {
            if !RESTRICTED_OPERATIONS.iter().any(|op| op.name == operation) {
                return Err(fail(
                    "data_elements",
                    format!("`{operation}` is not a restricted operation: use an operation name such as getOrders, getOrder or getOrderItems"),
                ));
            }
            if let Some(bad) = elements
                .iter()
                .find(|e| e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                return Err(fail(
                    "data_elements",
                    format!("`{bad}` for {operation} is not a data element name (buyerInfo, shippingAddress, buyerTaxInformation)"),
                ));
            }
        }
        if refresh_token.is_none() && (!raw.data_elements.is_empty() || raw.restricted_reports) {
            return Err(fail(
                "data_elements",
                "data_elements and restricted_reports need a seller's refresh_token: grantless tokens cannot mint Restricted Data Tokens".to_owned(),
            ));
        }
        let token_url = raw.token_url.unwrap_or_else(|| LWA_TOKEN_URL.to_owned());
        let https = token_url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
        if !https {
            return Err(fail(
                "token_url",
                format!("`{token_url}` is not an https:// URL"),
            ));
        }
        let hosts = raw
            .hosts
            .unwrap_or_else(|| self.default_hosts().iter().map(|h| h.to_string()).collect());
        let client_secret = cx.secret("client_secret", &raw.client_secret)?;
        let signer = AmazonSigner {
            grantless: refresh_token.is_none(),
            data_elements: raw.data_elements,
            restricted_reports: raw.restricted_reports,
        };
        let lwa = AmazonLwa {
            client_id: raw.client_id,
            client_secret,
            refresh_token,
            scopes,
            token_url,
        };
        let stand_in = AmazonStandIn::new(&lwa);
        Ok(ProfileParts {
            webhook: None,
            hosts,
            signer: Arc::new(signer),
            token: TokenSource::Managed(Arc::new(lwa)),
            stand_in: Arc::new(stand_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn build(text: &str) -> Result<ProfileParts, ProfileError> {
        let table: toml::Table = text.parse().unwrap();
        let resolve = |_: &str, r: &SecretRef| match r {
            SecretRef::Literal(s) => Ok(s.clone()),
            _ => Ok(Secret::new("x")),
        };
        AMAZON.profile(table, &ProfileContext::new("default", &resolve))
    }

    #[test]
    fn a_seller_profile_gets_the_regional_hosts_and_managed_tokens() {
        let parts = build(
            "client_id = \"amzn1.application-oa2-client.x\"\nclient_secret = \"s\"\nrefresh_token = \"Atzr|r\"\n",
        )
        .unwrap();
        assert_eq!(parts.hosts, PRODUCTION_HOSTS);
        assert!(parts.token.is_managed());
        assert!(parts.signer.scheme().contains("Restricted Data Token"));
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let key = |text: &str| build(text).err().map(|e| e.key).unwrap_or_default();
        let base = "client_id = \"c\"\nclient_secret = \"s\"\n";
        assert_eq!(key(base), "refresh_token");
        assert_eq!(
            key(&format!(
                "{base}refresh_token = \"r\"\nscopes = [\"sellingpartnerapi::notifications\"]\n"
            )),
            "scopes"
        );
        assert_eq!(
            key(&format!("{base}scopes = [\"notifications\"]\n")),
            "scopes"
        );
        assert_eq!(
            key(&format!(
                "{base}refresh_token = \"r\"\ntoken_url = \"http://x/\"\n"
            )),
            "token_url"
        );
        assert_eq!(
            key(&format!(
                "{base}refresh_token = \"r\"\n[data_elements]\ngetCatalogItem = [\"buyerInfo\"]\n"
            )),
            "data_elements"
        );
        assert!(build(&format!(
            "{base}refresh_token = \"r\"\n[data_elements]\ngetOrders = [\"buyerInfo\"]\n"
        ))
        .is_ok());
        assert!(build(&format!(
            "{base}scopes = [\"sellingpartnerapi::notifications\"]\n"
        ))
        .is_ok());
        assert_eq!(
            key("client_id = \" \"\nclient_secret = \"s\"\nrefresh_token = \"r\"\n"),
            "client_id"
        );
    }
}
