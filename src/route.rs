//! Routing policy: which profile signs a request for a host (honouring `x-signproxy-profile`),
//! whether an unsigned host may pass through, or why the request is refused.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{is_ip_literal, Config, Profile, ProxyClient};
use crate::egress::{classify, AddrClass};

/// The request header a client may use to pick a profile; removed before forwarding. A typed
/// name: looking it up on every request parses nothing.
pub const PROFILE_HEADER: http::HeaderName = http::HeaderName::from_static("x-signproxy-profile");

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
    /// TLS to the client (an `https://` URL, or TLS inside a tunnel). For a CONNECT itself this
    /// is not known yet: pass `false`, and each request inside is routed again with its own.
    pub https: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("no profile serves host `{host}` and it is not in [proxy] passthrough: add it to a profile's `hosts`, or to `passthrough` to forward it unsigned")]
    HostNotAllowed { host: String },
    #[error("`{host}` is not a host name (an empty label): check the URL")]
    MalformedHost { host: String },
    #[error("host `{host}` is signed only on port 443 (80 for plain http, upgraded){extra}; port {port} is refused: drop the port from the URL, or add `\"{host}:{port}\"` to [upstream] connect_to")]
    MarketplacePort {
        host: String,
        port: u16,
        extra: String,
    },
    #[error("`{address}` is {}, and no network in [proxy] allow_networks holds it: signproxy forwards to addresses only in networks listed there", class.map_or("an address", AddrClass::describe))]
    AddressNotAllowed {
        address: String,
        /// None for a public address (refused all the same: no pattern names it).
        class: Option<AddrClass>,
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

/// A host as routing, signing and dialling use it: lower-case, without the trailing dots of a
/// fully-qualified name (`api.ebay.com.` is `api.ebay.com`, and takes its route and `connect_to`).
pub fn normalize_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.trim_end_matches('.') {
        "" => host,
        bare => bare.to_owned(),
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
    if host.is_empty() || host.starts_with('.') || host.contains("..") {
        return Err(RouteError::MalformedHost {
            host: host.to_owned(),
        });
    }
    let mut serves = config.profiles.iter().filter(|p| p.serves(host));
    let Some(first) = serves.next() else {
        return passthrough(config, dest);
    };
    check_marketplace_port(config, dest)?;
    // The usual case, decided without collecting: one profile for the host, nobody choosing.
    if requested.is_none() && client.is_none() && serves.next().is_none() {
        return Ok(Route::Sign(Arc::clone(first)));
    }
    let serving: Vec<&Arc<Profile>> = config.profiles.iter().filter(|p| p.serves(host)).collect();
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
    // Port 80 only as plain http, which is upgraded: TLS to port 80 would reach another service.
    let default_port = dest.port == 443 || (dest.port == 80 && !dest.https);
    if default_port || connect_to_ports.contains(&dest.port) {
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
            return Err(RouteError::AddressNotAllowed {
                address: dest.host.to_owned(),
                class: ip.and_then(classify),
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
            https: true,
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

    fn client(name: &str, profiles: Option<&[&str]>) -> ProxyClient {
        ProxyClient {
            username: name.into(),
            password: crate::secret::Secret::new("pw"),
            profiles: profiles.map(|p| p.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_client_sees_only_its_profiles_and_its_name_picks_one() {
        let c = config(TWO);
        let host = "open-api.tiktokglobalshop.com";
        let us_only = client("app", Some(&["tiktok.us"]));
        assert_eq!(
            name(route(&c, dest(host), None, Some(&us_only))),
            "tiktok.us"
        );
        assert!(matches!(
            route(&c, dest(host), Some("default"), Some(&us_only)),
            Err(RouteError::UnknownProfile { .. })
        ));
        let none = client("app", Some(&[]));
        assert!(matches!(
            route(&c, dest(host), None, Some(&none)),
            Err(RouteError::ProfileNotAllowed { .. })
        ));
        // ... though passthrough stays open to it.
        assert_eq!(
            name(route(&c, dest("s3.amazonaws.com"), None, Some(&none))),
            "passthrough"
        );
        let named = client("us", None);
        assert_eq!(name(route(&c, dest(host), None, Some(&named))), "tiktok.us");
        assert_eq!(
            name(route(&c, dest(host), Some("default"), Some(&named))),
            "tiktok.default",
            "the header still wins over the username"
        );
        let anyone = client("app", None);
        assert_eq!(
            name(route(&c, dest(host), None, Some(&anyone))),
            "tiktok.default"
        );
    }

    #[test]
    fn marketplace_hosts_only_on_their_ports() {
        let c = config(&format!(
            "{TWO}\n[upstream]\nconnect_to = {{ \"open-api.tiktokglobalshop.com:9443\" = \"127.0.0.1:1\" }}\n"
        ));
        let at = |port, https| Destination {
            host: "open-api.tiktokglobalshop.com",
            port,
            tunnel: false,
            https,
        };
        assert!(route(&c, at(443, true), None, None).is_ok());
        assert!(
            route(&c, at(80, false), None, None).is_ok(),
            "plain http is upgraded"
        );
        assert!(
            route(&c, at(9443, true), None, None).is_ok(),
            "a connect_to port"
        );
        for (port, https) in [(80, true), (8443, true), (22, false), (19443, true)] {
            let e = route(&c, at(port, https), None, None).unwrap_err();
            assert!(
                matches!(e, RouteError::MarketplacePort { .. }),
                "{port}: {e}"
            );
        }
        let tunnel = Destination {
            tunnel: true,
            https: false,
            ..at(22, false)
        };
        assert!(route(&c, tunnel, None, None).is_err());
    }

    #[test]
    fn passthrough_ports_and_addresses() {
        let c = config(&format!(
            "{}\nallow_networks = [\"10.1.0.0/16\"]\npassthrough_ports = [8443]\n{}",
            "[proxy]\npassthrough = [\"*.amazonaws.com\"]",
            &TWO[TWO.find("[tiktok.default]").unwrap()..]
        ));
        let at = |host, port, tunnel| Destination {
            host,
            port,
            tunnel,
            https: true,
        };
        let ok = |d| matches!(route(&c, d, None, None), Ok(Route::Passthrough));
        assert!(ok(at("s3.amazonaws.com", 8443, true)));
        assert!(
            !ok(at("s3.amazonaws.com", 443, true)),
            "CONNECT: only passthrough_ports"
        );
        assert!(
            ok(at("s3.amazonaws.com", 443, false)),
            "absolute-form: 80 and 443 too"
        );
        assert!(ok(at("s3.amazonaws.com", 80, false)));
        assert!(!ok(at("s3.amazonaws.com", 22, false)));
        assert!(
            ok(at("10.1.2.3", 8443, true)),
            "an address inside allow_networks"
        );
        let e = route(&c, at("10.2.0.1", 8443, true), None, None).unwrap_err();
        assert!(
            matches!(
                e,
                RouteError::AddressNotAllowed {
                    class: Some(AddrClass::Private),
                    ..
                }
            ),
            "{e}"
        );
        let e = route(&c, at("8.8.8.8", 443, false), None, None).unwrap_err();
        assert!(
            matches!(e, RouteError::AddressNotAllowed { class: None, .. }),
            "{e}"
        );
        for bad in ["a..amazonaws.com", ".x.amazonaws.com", ""] {
            let e = route(&c, at(bad, 443, false), None, None).unwrap_err();
            assert!(matches!(e, RouteError::MalformedHost { .. }), "{bad}: {e}");
        }
        assert_eq!(normalize_host("API.eBay.com.."), "api.ebay.com");
        assert_eq!(normalize_host("."), ".");
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
