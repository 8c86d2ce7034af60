//! The IOP gateway's offline stand-in.

use super::IopPolicy;
use crate::marketplace::{SandboxAnswer, SandboxContext, SandboxRequest, StandIn};
use crate::secret::Secret;

#[derive(Debug)]
pub struct IopStandIn {
    pub policy: &'static IopPolicy,
    pub app_key: String,
    pub app_secret: Secret,
}

impl StandIn for IopStandIn {
    fn claims(&self, req: &SandboxRequest) -> bool {
        req.query_param("app_key").as_deref() == Some(self.app_key.as_str())
    }
    fn is_token_request(&self, req: &SandboxRequest) -> bool {
        req.path.starts_with("/rest/auth/token/")
    }
    fn token_hosts(&self) -> Vec<String> {
        vec![self.policy.token_host.to_owned()]
    }
    fn answer(&self, _req: &SandboxRequest, _cx: &SandboxContext<'_>) -> SandboxAnswer {
        SandboxAnswer::new(http::StatusCode::NOT_IMPLEMENTED, serde_json::json!({}))
    }
}
