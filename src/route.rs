//! Routing policy: which profile signs a request for a host (honouring `x-signproxy-profile`),
//! whether an unsigned host may pass through, or why the request is refused.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{is_ip_literal, Config, Profile, ProxyClient};
use crate::egress::{classify, AddrClass};

/// The request header a client may use to pick a profile; removed before forwarding.
pub const PROFILE_HEADER: &str = "x-signproxy-profile";

/// Ports a marketplace is reached on without a `connect_to` entry: https, and plain http (which
/// signproxy upgrades to https on 443).
const MARKETPLACE_PORTS: [u16; 2] = [443, 80];

/// Ports an absolute-form (HTTP_PROXY) passthrough request may use besides `passthrough_ports`.
const WEB_PORTS: [u16; 2] = [80, 443];

/// What to do with a request for a host.
#[derive(Debug, Clone)]
pub enum Route {
    /// Sign with this profile.
    Sign(Arc<Profile>),
    /// Forward or tunnel unchanged (`[proxy] passthrough`), after the egress guard.
    Passthrough,
}

/// Where a client wants to go, as it named it.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// Lower-case, without a trailing dot.
    pub host: &'a str,
    /// The port the client named, or the scheme's default.
    pub port: u16,
    /// CONNECT (a tunnel) rather than an absolute-form request.
    pub tunnel: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("no profile serves host `{host}` and it is not in [proxy] passthrough: add it to a profile's `hosts`, or to `passthrough` to forward it unsigned")]
    HostNotAllowed { host: String },
    #[error("host `{host}` is signed only on port 443{extra}; port {port} is refused: drop the port from the URL, or add `\"{host}:{port}\"` to [upstream] connect_to")]
    MarketplacePort {
        host: String,
        port: u16,
        extra: String,
    },
    #[error("`{address}` is {class}, and no network in [proxy] allow_networks holds it: signproxy forwards to addresses only in networks listed there")]
    AddressNotAllowed {
        address: String,
        class: &'static str,
    },
    #[error("port {port} of passthrough host `{host}` is not open: {allowed} (set [proxy] passthrough_ports to open more)")]
    PassthroughPort {
        host: String,
        port: u16,
        allowed: String,
    },
    #[error("more than one profile serves host `{host}` ({candidates}) and none is named `default`: send the header `x-signproxy-profile: NAME` to choose")]
    AmbiguousProfile { host: String, candidates: String },
    #[error("x-signproxy-profile names `{requested}`, but the profiles serving host `{host}` are: {candidates}")]
    UnknownProfile {
        requested: String,
        host: String,
        candidates: String,
    },
    #[error("proxy client `{client}` may not use the profiles serving host `{host}` ({candidates}): add one to its `profiles` in [[proxy.auth.clients]]")]
    ProfileNotAllowed {
        client: String,
        host: String,
        candidates: String,
    },
}

/// A host as routing, signing and dialling use it: lower-case, without the trailing dot of a
/// fully-qualified name (`api.ebay.com.` is `api.ebay.com`, and takes its route and `connect_to`).
pub fn normalize_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix('.') {
        Some(bare) if !bare.is_empty() => bare.to_owned(),
        _ => host,
    }
}

/// The port a client names, or its scheme's default.
pub fn named_port(https: bool, port: Option<u16>) -> u16 {
    port.unwrap_or(if https { 443 } else { 80 })
}

/// The port a signed request goes to: marketplace APIs are https-only, so plain http on its
/// default port is upgraded to 443.
pub fn signed_port(https: bool, port: Option<u16>) -> u16 {
    match named_port(https, port) {
        80 if !https => 443,
        port => port,
    }
}

/// Routes a request for `dest`. `requested` is the value of `x-signproxy-profile`, if sent; it
/// may be the bare name (`default`) or the qualified one (`tiktok.default`). `client` is the
/// authenticated proxy client, if `[proxy.auth]` is on: it sees only the profiles it may use, and
/// its username chooses among them when it names one.
pub fn route(
    config: &Config,
    dest: Destination<'_>,
    requested: Option<&str>,
    client: Option<&ProxyClient>,
) -> Result<Route, RouteError> {
    let host = dest.host;
    let serving: Vec<&Arc<Profile>> = config.profiles.iter().filter(|p| p.serves(host)).collect();
    if serving.is_empty() {
        return passthrough(config, dest);
    }
    check_marketplace_port(config, dest)?;
    let names = |list: &[&Arc<Profile>]| {
        let names: Vec<String> = list.iter().map(|p| p.qualified_name()).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let candidates: Vec<&Arc<Profile>> = serving
        .iter()
        .copied()
        .filter(|p| client.map_or(true, |c| c.may_use(p)))
        .collect();
    if let (Some(client), []) = (client, candidates.as_slice()) {
        return Err(RouteError::ProfileNotAllowed {
            client: client.username.clone(),
            host: host.to_owned(),
            candidates: names(&serving),
        });
    }
    let is_named =
        |p: &&&Arc<Profile>, wanted: &str| p.name == wanted || p.qualified_name() == wanted;

    if let Some(wanted) = requested.map(str::trim) {
        return candidates
            .iter()
            .find(|p| is_named(p, wanted))
            .map(|p| Route::Sign(Arc::clone(p)))
            .ok_or_else(|| RouteError::UnknownProfile {
                requested: wanted.to_owned(),
                host: host.to_owned(),
                candidates: names(&candidates),
            });
    }
    if let Some(by_user) = client.and_then(|c| candidates.iter().find(|p| is_named(p, &c.username)))
    {
        return Ok(Route::Sign(Arc::clone(by_user)));
    }
    match candidates.as_slice() {
        [only] => Ok(Route::Sign(Arc::clone(only))),
        many => {
            let defaults: Vec<&&Arc<Profile>> =
                many.iter().filter(|p| p.name == "default").collect();
            match defaults.as_slice() {
                [one] => Ok(Route::Sign(Arc::clone(one))),
                _ => Err(RouteError::AmbiguousProfile {
                    host: host.to_owned(),
                    candidates: names(&candidates),
                }),
            }
        }
    }
}

/// A marketplace host is signed only on its own port: 443 (80 is upgraded to it), or the port of
/// a `connect_to` entry for the host. Anything else could carry the token somewhere else.
fn check_marketplace_port(config: &Config, dest: Destination<'_>) -> Result<(), RouteError> {
    let connect_to_ports: Vec<u16> = config
        .upstream
        .connect_to
        .keys()
        .filter_map(|key| key.rsplit_once(':'))
        .filter(|(h, _)| *h == dest.host)
        .filter_map(|(_, p)| p.parse().ok())
        .collect();
    if MARKETPLACE_PORTS.contains(&dest.port) || connect_to_ports.contains(&dest.port) {
        return Ok(());
    }
    let extra = if connect_to_ports.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = connect_to_ports.iter().map(u16::to_string).collect();
        format!(" and its [upstream] connect_to port(s) {}", list.join(", "))
    };
    Err(RouteError::MarketplacePort {
        host: dest.host.to_owned(),
        port: dest.port,
        extra,
    })
}

fn passthrough(config: &Config, dest: Destination<'_>) -> Result<Route, RouteError> {
    let proxy = &config.proxy;
    // Patterns never match an address; only a network the operator opened does.
    if is_ip_literal(dest.host) {
        let ip = dest
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let opened = ip.is_some_and(|ip| proxy.allow_networks.iter().any(|n| n.contains(&ip)));
        if !opened {
            let class = ip
                .and_then(classify)
                .map_or("an address", AddrClass::describe);
            return Err(RouteError::AddressNotAllowed {
                address: dest.host.to_owned(),
                class,
            });
        }
    } else if !proxy.passthrough.iter().any(|p| p.matches(dest.host)) {
        return Err(RouteError::HostNotAllowed {
            host: dest.host.to_owned(),
        });
    }
    let port_open = proxy.passthrough_ports.contains(&dest.port)
        || (!dest.tunnel && WEB_PORTS.contains(&dest.port));
    if !port_open {
        let ports: Vec<String> = proxy.passthrough_ports.iter().map(u16::to_string).collect();
        let allowed = if dest.tunnel {
            format!("CONNECT may reach port(s) {}", ports.join(", "))
        } else {
            format!("requests may reach ports 80, 443 and {}", ports.join(", "))
        };
        return Err(RouteError::PassthroughPort {
            host: dest.host.to_owned(),
            port: dest.port,
            allowed,
        });
    }
    Ok(Route::Passthrough)
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

    fn dest(host: &str) -> Destination<'_> {
        Destination {
            host,
            port: 443,
            tunnel: false,
        }
    }

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
            name(route(&c, dest("open-api.tiktokglobalshop.com"), None, None)),
            "tiktok.default"
        );
        assert_eq!(
            name(route(
                &c,
                dest("OPEN-API.tiktokglobalshop.com"),
                Some("us"),
                None
            )),
            "tiktok.us"
        );
        assert_eq!(
            name(route(
                &c,
                dest("open-api.tiktokglobalshop.com"),
                Some("tiktok.us"),
                None
            )),
            "tiktok.us"
        );
    }

    #[test]
    fn unknown_profile_lists_candidates() {
        let c = config(TWO);
        let e = route(&c, dest("open-api.tiktokglobalshop.com"), Some("eu"), None).unwrap_err();
        assert!(matches!(e, RouteError::UnknownProfile { .. }));
        assert!(e.to_string().contains("tiktok.default, tiktok.us"), "{e}");
    }

    #[test]
    fn ambiguous_without_default() {
        let c = config(
            "[tiktok.a]\napp_key=\"a\"\napp_secret=\"s\"\n[tiktok.b]\napp_key=\"b\"\napp_secret=\"s\"\n",
        );
        let e = route(&c, dest("open-api.tiktokglobalshop.com"), None, None).unwrap_err();
        assert!(matches!(e, RouteError::AmbiguousProfile { .. }), "{e}");
    }

    #[test]
    fn only_profile_is_chosen() {
        let c = config("[tiktok.shop1]\napp_key=\"a\"\napp_secret=\"s\"\n");
        assert_eq!(
            name(route(&c, dest("open-api.tiktokglobalshop.com"), None, None)),
            "tiktok.shop1"
        );
    }

    #[test]
    fn passthrough_and_refusal() {
        let c = config(TWO);
        assert_eq!(
            name(route(&c, dest("s3.amazonaws.com"), None, None)),
            "passthrough"
        );
        assert!(matches!(
            route(&c, dest("example.com"), None, None),
            Err(RouteError::HostNotAllowed { .. })
        ));
    }
}
