//! Lazada: the `[lazada.NAME]` table, the six venture gateways and `auth.lazada.com`, and its
//! IOP policy (REST paths only; a rotated refresh token keeps the original expiry). The
//! protocol itself is in `iop/`.

use super::iop::{self, IopPolicy};
use super::{Marketplace, ProfileContext, ProfileError, ProfileParts};

/// The registry's Lazada.
pub static LAZADA: Lazada = Lazada;

pub struct Lazada;

static POLICY: IopPolicy = IopPolicy {
    id: "lazada",
    display: "Lazada",
    sync_without_prefix: false,
    refresh_url: "https://auth.lazada.com/rest/auth/token/refresh",
    token_host: "auth.lazada.com",
    // "Seller authorization introduction": refreshing resets the access token's duration, not
    // the refresh token's.
    refresh_expiry_carries_over: true,
    consent_hint: " (the refresh token is invalid or expired: authorize the seller again at https://auth.lazada.com/oauth/authorize and put the new refresh_token in the config)",
};

impl Marketplace for Lazada {
    fn id(&self) -> &'static str {
        POLICY.id
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &[
            "api.lazada.sg",
            "api.lazada.co.th",
            "api.lazada.com.my",
            "api.lazada.vn",
            "api.lazada.com.ph",
            "api.lazada.co.id",
            "auth.lazada.com",
        ]
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        iop::profile(&POLICY, self.default_hosts(), table, cx)
    }
}
