//! AliExpress: the `[aliexpress.NAME]` table, the `api-sg.aliexpress.com` gateway, and its IOP
//! policy (`/sync` business APIs signed without a prefix; token endpoint on the same host). The
//! protocol itself is in `iop/`.

use super::iop::{self, IopPolicy};
use super::{Marketplace, ProfileContext, ProfileError, ProfileParts};

/// The registry's AliExpress.
pub static ALIEXPRESS: Aliexpress = Aliexpress;

pub struct Aliexpress;

static POLICY: IopPolicy = IopPolicy {
    id: "aliexpress",
    display: "AliExpress",
    sync_without_prefix: true,
    refresh_url: "https://api-sg.aliexpress.com/rest/auth/token/refresh",
    token_host: "api-sg.aliexpress.com",
    // Lifetimes come from each answer; nothing documents that rotation keeps the old expiry.
    refresh_expiry_carries_over: false,
    consent_hint: " (the refresh token is invalid or expired: authorize the seller again in the AliExpress Open Platform console and put the new refresh_token in the config)",
};

impl Marketplace for Aliexpress {
    fn id(&self) -> &'static str {
        POLICY.id
    }

    fn default_hosts(&self) -> &'static [&'static str] {
        &["api-sg.aliexpress.com"]
    }

    fn profile(
        &self,
        table: toml::Table,
        cx: &ProfileContext<'_>,
    ) -> Result<ProfileParts, ProfileError> {
        iop::profile(&POLICY, self.default_hosts(), table, cx)
    }
}
