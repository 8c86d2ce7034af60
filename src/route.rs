//! Routing policy: which profile signs a request for a host (honouring `x-signproxy-profile`),
//! whether an unsigned host may pass through, or why the request is refused.

use std::sync::Arc;

use crate::config::{Config, Profile};

/// The request header a client may use to pick a profile; removed before forwarding.
pub const PROFILE_HEADER: &str = "x-signproxy-profile";

/// What to do with a request for a host.
#[derive(Debug, Clone)]
pub enum Route {
    /// Sign with this profile.
    Sign(Arc<Profile>),
    /// Forward or tunnel unchanged (`[proxy] passthrough`).
    Passthrough,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("no profile serves host `{host}` and it is not in [proxy] passthrough: add it to a profile's `hosts`, or to `passthrough` to forward it unsigned")]
    HostNotAllowed { host: String },
    #[error("more than one profile serves host `{host}` ({candidates}) and none is named `default`: send the header `x-signproxy-profile: NAME` to choose")]
    AmbiguousProfile { host: String, candidates: String },
    #[error("x-signproxy-profile names `{requested}`, but the profiles serving host `{host}` are: {candidates}")]
    UnknownProfile {
        requested: String,
        host: String,
        candidates: String,
    },
}

/// Routes `host` (no port). `requested` is the value of `x-signproxy-profile`, if sent; it may be
/// the bare name (`default`) or the qualified one (`tiktok.default`).
pub fn route(config: &Config, host: &str, requested: Option<&str>) -> Result<Route, RouteError> {
    let candidates: Vec<&Arc<Profile>> =
        config.profiles.iter().filter(|p| p.serves(host)).collect();
    let names = || {
        let list: Vec<String> = candidates.iter().map(|p| p.qualified_name()).collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };

    if let Some(wanted) = requested.map(str::trim) {
        return candidates
            .iter()
            .find(|p| p.name == wanted || p.qualified_name() == wanted)
            .map(|p| Route::Sign(Arc::clone(p)))
            .ok_or_else(|| RouteError::UnknownProfile {
                requested: wanted.to_owned(),
                host: host.to_owned(),
                candidates: names(),
            });
    }

    match candidates.as_slice() {
        [] if config.proxy.passthrough.iter().any(|p| p.matches(host)) => Ok(Route::Passthrough),
        [] => Err(RouteError::HostNotAllowed {
            host: host.to_owned(),
        }),
        [only] => Ok(Route::Sign(Arc::clone(only))),
        many => {
            let defaults: Vec<&&Arc<Profile>> =
                many.iter().filter(|p| p.name == "default").collect();
            match defaults.as_slice() {
                [one] => Ok(Route::Sign(Arc::clone(one))),
                _ => Err(RouteError::AmbiguousProfile {
                    host: host.to_owned(),
                    candidates: names(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, Path::new(".")).unwrap()
    }

    const TWO: &str = r#"
        [proxy]
        passthrough = ["*.amazonaws.com"]
        [tiktok.default]
        app_key = "a"
        app_secret = "s"
        [tiktok.us]
        app_key = "b"
        app_secret = "s"
    "#;

    fn name(r: Result<Route, RouteError>) -> String {
        match r.unwrap() {
            Route::Sign(p) => p.qualified_name(),
            Route::Passthrough => "passthrough".into(),
        }
    }

    #[test]
    fn default_wins_when_several_serve() {
        let c = config(TWO);
        assert_eq!(
            name(route(&c, "open-api.tiktokglobalshop.com", None)),
            "tiktok.default"
        );
        assert_eq!(
            name(route(&c, "OPEN-API.tiktokglobalshop.com", Some("us"))),
            "tiktok.us"
        );
        assert_eq!(
            name(route(
                &c,
                "open-api.tiktokglobalshop.com",
                Some("tiktok.us")
            )),
            "tiktok.us"
        );
    }

    #[test]
    fn unknown_profile_lists_candidates() {
        let c = config(TWO);
        let e = route(&c, "open-api.tiktokglobalshop.com", Some("eu")).unwrap_err();
        assert!(matches!(e, RouteError::UnknownProfile { .. }));
        assert!(e.to_string().contains("tiktok.default, tiktok.us"), "{e}");
    }

    #[test]
    fn ambiguous_without_default() {
        let c = config(
            "[tiktok.a]\napp_key=\"a\"\napp_secret=\"s\"\n[tiktok.b]\napp_key=\"b\"\napp_secret=\"s\"\n",
        );
        let e = route(&c, "open-api.tiktokglobalshop.com", None).unwrap_err();
        assert!(matches!(e, RouteError::AmbiguousProfile { .. }), "{e}");
    }

    #[test]
    fn only_profile_is_chosen() {
        let c = config("[tiktok.shop1]\napp_key=\"a\"\napp_secret=\"s\"\n");
        assert_eq!(
            name(route(&c, "open-api.tiktokglobalshop.com", None)),
            "tiktok.shop1"
        );
    }

    #[test]
    fn passthrough_and_refusal() {
        let c = config(TWO);
        assert_eq!(name(route(&c, "s3.amazonaws.com", None)), "passthrough");
        assert!(matches!(
            route(&c, "example.com", None),
            Err(RouteError::HostNotAllowed { .. })
        ));
    }
}
