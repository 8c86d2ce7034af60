//! Egress guard (SSRF): which addresses a destination that is not a marketplace profile host may be
//! dialled at, resolving each name once and dialling only the addresses that were checked.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;

/// Why an address is not ordinary public unicast, and so is refused unless opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    Loopback,
    Unspecified,
    Private,
    LinkLocal,
    SharedCgnat,
    UniqueLocal,
    Multicast,
    Broadcast,
    Reserved,
    Documentation,
    Nat64,
    SixToFour,
    Teredo,
    ProxyItself,
}

impl AddrClass {
    /// Every class, so metrics can pre-register a series per label.
    pub const ALL: [AddrClass; 14] = [
        AddrClass::Loopback,
        AddrClass::Unspecified,
        AddrClass::Private,
        AddrClass::LinkLocal,
        AddrClass::SharedCgnat,
        AddrClass::UniqueLocal,
        AddrClass::Multicast,
        AddrClass::Broadcast,
        AddrClass::Reserved,
        AddrClass::Documentation,
        AddrClass::Nat64,
        AddrClass::SixToFour,
        AddrClass::Teredo,
        AddrClass::ProxyItself,
    ];

    /// Short label for metrics and log fields.
    pub fn label(self) -> &'static str {
        match self {
            AddrClass::Loopback => "loopback",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link_local",
            AddrClass::SharedCgnat => "cgnat",
            AddrClass::UniqueLocal => "unique_local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
            AddrClass::Documentation => "documentation",
            AddrClass::Nat64 => "nat64",
            AddrClass::SixToFour => "6to4",
            AddrClass::Teredo => "teredo",
            AddrClass::ProxyItself => "proxy_itself",
        }
    }

    /// Human phrase for messages; names the ranges so an operator can write the right
    /// `allow_networks` entry.
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Loopback => "loopback (127.0.0.0/8, ::1)",
            AddrClass::Unspecified => "unspecified or \"this network\" (0.0.0.0/8, ::)",
            AddrClass::Private => {
                "private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16; deprecated IPv6 site-local fec0::/10)"
            }
            AddrClass::LinkLocal => {
                "link-local (169.254.0.0/16, fe80::/10; cloud metadata lives here)"
            }
            AddrClass::SharedCgnat => "carrier-grade NAT shared space (100.64.0.0/10)",
            AddrClass::UniqueLocal => "IPv6 unique-local (fc00::/7)",
            AddrClass::Multicast => "multicast (224.0.0.0/4, ff00::/8)",
            AddrClass::Broadcast => "broadcast (255.255.255.255)",
            AddrClass::Reserved => {
                "reserved or special-purpose (240.0.0.0/4, 192.0.0.0/24, 198.18.0.0/15, 100::/64, 2001::/23, unallocated IPv6 outside 2000::/3)"
            }
            AddrClass::Documentation => {
                "documentation-only (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20)"
            }
            AddrClass::Nat64 => "NAT64 (64:ff9b::/96, 64:ff9b:1::/48)",
            AddrClass::SixToFour => "6to4 (2002::/16, relay anycast 192.88.99.0/24)",
            AddrClass::Teredo => "Teredo (2001::/32)",
            AddrClass::ProxyItself => "the proxy's own listen or admin address",
        }
    }
}

/// First match wins, so a narrow range that sits inside a wider one comes first.
const V4_RANGES: &[(Ipv4Addr, u8, AddrClass)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, AddrClass::Unspecified),
    (Ipv4Addr::new(127, 0, 0, 0), 8, AddrClass::Loopback),
    (Ipv4Addr::new(10, 0, 0, 0), 8, AddrClass::Private),
    (Ipv4Addr::new(172, 16, 0, 0), 12, AddrClass::Private),
    (Ipv4Addr::new(192, 168, 0, 0), 16, AddrClass::Private),
    (Ipv4Addr::new(169, 254, 0, 0), 16, AddrClass::LinkLocal),
    (Ipv4Addr::new(100, 64, 0, 0), 10, AddrClass::SharedCgnat),
    (Ipv4Addr::new(224, 0, 0, 0), 4, AddrClass::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, AddrClass::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, AddrClass::Reserved),
    // IETF protocol assignments: a few (PCP/TURN anycast) are global, but nothing a
    // passthrough client should need, so the whole block stays shut by default.
    (Ipv4Addr::new(192, 0, 0, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(198, 18, 0, 0), 15, AddrClass::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, AddrClass::Documentation),
    (Ipv4Addr::new(198, 51, 100, 0), 24, AddrClass::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, AddrClass::Documentation),
    // Deprecated 6to4 relay anycast (RFC 7526): whoever answers there is some relay, not a
    // destination a client means.
    (Ipv4Addr::new(192, 88, 99, 0), 24, AddrClass::SixToFour),
];

/// First match wins. `::`, `::1` and the IPv4-embedding `::/96` and `::ffff:0:0/96` are handled
/// before this table; anything outside 2000::/3 that no row names is unallocated.
const V6_RANGES: &[(Ipv6Addr, u8, AddrClass)] = &[
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        AddrClass::Nat64,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        AddrClass::Nat64,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        AddrClass::Reserved,
    ),
    // Teredo sits inside 2001::/23, so it must come before the wider row.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        AddrClass::Teredo,
    ),
    // Same reasoning as 192.0.0.0/24: benchmarking, ORCHID and anycast services, none a real
    // upstream.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        AddrClass::Reserved,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        AddrClass::Documentation,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        AddrClass::Documentation,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        AddrClass::SixToFour,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        AddrClass::UniqueLocal,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        AddrClass::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        AddrClass::Private,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        AddrClass::Multicast,
    ),
];

/// `None` = ordinary public unicast; `Some(class)` = refused unless `allow_networks` opens it.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    let bits = u32::from(ip);
    V4_RANGES.iter().find_map(|&(net, len, class)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == u32::from(net) & mask).then_some(class)
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddrClass> {
    let bits = u128::from(ip);
    match bits {
        0 => return Some(AddrClass::Unspecified),
        1 => return Some(AddrClass::Loopback),
        _ => {}
    }
    // The kernel (or a NAT in between) delivers these to the embedded IPv4 address, so they are
    // exactly as dangerous as it; ::ffff:8.8.8.8 stays public.
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let table = V6_RANGES.iter().find_map(|&(net, len, class)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        (bits & mask == u128::from(net) & mask).then_some(class)
    });
    if table.is_some() {
        return table;
    }
    // Only 2000::/3 is allocated as global unicast; whatever lies outside it and is not named
    // above cannot be a legitimate upstream.
    if bits >> 125 != 0b001 {
        return Some(AddrClass::Reserved);
    }
    None
}

/// The IPv4 address carried by an IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible
/// (`::a.b.c.d`, not `::` or `::1`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    if bits >> 32 == 0 && bits > 1 {
        // Lossless: the upper 96 bits were just checked to be zero.
        return Some(Ipv4Addr::from(bits as u32));
    }
    None
}

/// The IPv4 address an IPv6 translation form delivers to: IPv4-mapped or -compatible, NAT64
/// (64:ff9b::/96, the last 32 bits) and 6to4 (2002:AABB:CCDD::/48).
fn carried_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(v4) = embedded_v4(v6) {
        return Some(v4);
    }
    let bits = u128::from(v6);
    // Lossless casts: each takes exactly the 32 bits it names.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// The form two spellings of one destination share: a v4-mapped IPv6 address is the IPv4 it
/// maps, because a dual-stack socket connects there.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// Where passthrough traffic may go.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// `[proxy] allow_networks`: ranges a passthrough destination may be in despite its class.
    pub allow_networks: Vec<IpNet>,
    /// The proxy's own listen and admin addresses: never dialled (no loops), whatever
    /// allow_networks says.
    pub own_addresses: Vec<SocketAddr>,
}

impl EgressPolicy {
    /// Ok when `addr` may be dialled.
    pub fn check(&self, addr: SocketAddr) -> Result<(), EgressDenied> {
        self.check_named(&addr.ip().to_string(), addr)
    }

    fn check_named(&self, host: &str, addr: SocketAddr) -> Result<(), EgressDenied> {
        let denied = |class| EgressDenied {
            host: host.to_string(),
            addr,
            class,
        };
        let ip = canonical(addr.ip());
        let class = classify(addr.ip());
        for own in &self.own_addresses {
            let own_ip = canonical(own.ip());
            if own_ip == ip && own.port() == addr.port() {
                return Err(denied(AddrClass::ProxyItself));
            }
            // A wildcard listener is reachable at every local address, but we do not enumerate
            // the host's interfaces: a non-public target on that port is treated as us, while
            // the host's own public address on that port is not caught here. The operator
            // closes that by listening on a specific address.
            if own_ip.is_unspecified() && own.port() == addr.port() && class.is_some() {
                return Err(denied(AddrClass::ProxyItself));
            }
        }
        let Some(class) = class else {
            return Ok(());
        };
        let opened = self
            .allow_networks
            .iter()
            .any(|net| net.contains(&addr.ip()) || net.contains(&ip));
        if !opened {
            return Err(denied(class));
        }
        // Opening an IPv6 range (`::/0`, or NAT64's 64:ff9b::/96 for a DNS64 cluster) must not
        // open the IPv4 address a translation form carries: that needs its own IPv4 entry.
        match carried_v4(addr.ip()).map(|v4| (v4, classify(IpAddr::V4(v4)))) {
            Some((v4, Some(inner)))
                if !self
                    .allow_networks
                    .iter()
                    .any(|net| net.contains(&IpAddr::V4(v4))) =>
            {
                Err(denied(inner))
            }
            _ => Ok(()),
        }
    }

    /// Resolve `host` ONCE (an IP literal, with or without `[brackets]`, is not looked up), check
    /// EVERY resolved address (a name that resolves to both a public and a private address is
    /// refused: the resolver could hand either to whoever dials next), and return the addresses
    /// in resolver order for the caller to dial exactly these, with no second lookup that could
    /// answer differently (DNS rebinding). `timeout` bounds the lookup.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        let resolve_err = |source| EgressError::Resolve {
            host: host.to_string(),
            source,
        };
        let bare = match host.strip_prefix('[') {
            Some(rest) => match rest.strip_suffix(']') {
                Some(inner) => inner,
                None => {
                    return Err(resolve_err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "unbalanced `[` in host",
                    )))
                }
            },
            None => host,
        };
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            self.check_named(host, addr)?;
            return Ok(vec![addr]);
        }
        if bare.len() != host.len() {
            // Brackets promise an IP literal; looking the inside up as a name would be a guess.
            return Err(resolve_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bracketed host is not an IP address",
            )));
        }
        if host.is_empty() {
            return Err(EgressError::NoAddress {
                host: String::new(),
            });
        }
        let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                resolve_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("lookup timed out after {timeout:?}"),
                ))
            })?
            .map_err(resolve_err)?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(EgressError::NoAddress {
                host: host.to_string(),
            });
        }
        for &addr in &addrs {
            self.check_named(host, addr)?;
        }
        Ok(addrs)
    }

    /// [`resolve`](Self::resolve), then TCP connect to the first address that accepts (each
    /// attempt bounded by `timeout`), with `TCP_NODELAY` set. The returned stream's peer is one
    /// of the checked addresses. When every address fails, the last failure is returned, as
    /// `std::net::TcpStream::connect` does.
    pub async fn dial(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, EgressError> {
        let addrs = self.resolve(host, port, timeout).await?;
        let mut last = EgressError::NoAddress {
            host: host.to_string(),
        };
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Latency matters more than packet count for request/response traffic, and
                    // a socket that refuses the option still works.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(source)) => last = EgressError::Connect { addr, source },
                Err(_) => last = EgressError::Timeout { addr, timeout },
            }
        }
        Err(last)
    }
}

/// A destination address the policy refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{addr} is {}: signproxy does not forward there{}; {}",
    .class.describe(),
    requested_as(.host, .addr),
    fix_hint(.class, .addr)
)]
pub struct EgressDenied {
    /// The host as the client named it (a name, or the IP literal).
    pub host: String,
    pub addr: SocketAddr,
    pub class: AddrClass,
}

/// Names the host only when it adds something: for an IP literal the address says it all.
fn requested_as(host: &str, addr: &SocketAddr) -> String {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) if ip == addr.ip() => String::new(),
        _ => format!(" (`{host}` resolves to it)"),
    }
}

fn fix_hint(class: &AddrClass, addr: &SocketAddr) -> String {
    if *class == AddrClass::ProxyItself {
        return "sending it there would loop back into the proxy, and `[proxy] allow_networks` \
                cannot open it"
            .to_string();
    }
    let ip = canonical(addr.ip());
    let single = match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    };
    format!(
        "if this destination is meant to be reachable, add `{single}` (or a range holding it) to \
         `[proxy] allow_networks`"
    )
}

/// Why a passthrough destination could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Denied(#[from] EgressDenied),
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TCP connect to {addr} timed out after {timeout:?} ([upstream] connect_timeout_ms)")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// Connectors must return `io::Error`; the `EgressError` rides inside so [`find_denied`] can
/// still tell a policy refusal from a network failure once hyper has wrapped it.
impl From<EgressError> for io::Error {
    fn from(e: EgressError) -> io::Error {
        let kind = match &e {
            EgressError::Denied(_) => io::ErrorKind::PermissionDenied,
            EgressError::Resolve { source, .. } | EgressError::Connect { source, .. } => {
                source.kind()
            }
            EgressError::NoAddress { .. } => io::ErrorKind::NotFound,
            EgressError::Timeout { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

/// Finds an [`EgressDenied`] anywhere in `e`'s source chain, including inside an `io::Error`'s
/// payload: `io::Error::source()` skips its payload and goes to the payload's source, and the
/// TLS connector boxes the dialler's `io::Error`, so a plain `source()` walk would miss it.
pub fn find_denied<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a EgressDenied> {
    // A bound instead of trust: a buggy `source()` that returns itself must not hang a request.
    const MAX_DEPTH: usize = 64;
    let mut current = Some(e);
    for _ in 0..MAX_DEPTH {
        let err = current?;
        if let Some(denied) = err.downcast_ref::<EgressDenied>() {
            return Some(denied);
        }
        if let Some(EgressError::Denied(denied)) = err.downcast_ref::<EgressError>() {
            return Some(denied);
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            current = Some(inner as &(dyn StdError + 'static));
            continue;
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod carried_tests {
    use super::*;

    fn policy(nets: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow_networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            own_addresses: Vec::new(),
        }
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 443)
    }

    #[test]
    fn opening_an_ipv6_range_does_not_open_the_ipv4_it_carries() {
        let everything6 = policy(&["::/0"]);
        for carried in [
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::10.0.0.1",
        ] {
            let e = everything6.check(at(carried)).unwrap_err();
            assert_ne!(e.class, AddrClass::Nat64, "{carried}: judged by its IPv4");
        }
        // A DNS64 cluster opens NAT64 and reaches public IPv4 through it, not metadata.
        let dns64 = policy(&["64:ff9b::/96"]);
        assert!(dns64.check(at("64:ff9b::808:808")).is_ok());
        assert_eq!(
            dns64.check(at("64:ff9b::a9fe:a9fe")).unwrap_err().class,
            AddrClass::LinkLocal
        );
        // ... unless that IPv4 network is opened too.
        assert!(policy(&["64:ff9b::/96", "169.254.0.0/16"])
            .check(at("64:ff9b::a9fe:a9fe"))
            .is_ok());
        assert_eq!(
            carried_v4("2002:c0a8:0101::1".parse().unwrap()),
            Some("192.168.1.1".parse().unwrap())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    fn net(s: &str) -> IpNet {
        IpNet::from_str(s).unwrap()
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn classification_table() {
        use AddrClass::*;
        let table: &[(&str, Option<AddrClass>)] = &[
            // public
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.0.1.255", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("2606:4700::1111", None),
            ("2a00:1450:4001::200e", None),
            ("::ffff:8.8.8.8", None),
            ("::8.8.8.8", None),
            ("2001:200::1", None),
            // unspecified / this network
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            // loopback
            ("127.0.0.1", Some(Loopback)),
            ("127.0.0.2", Some(Loopback)),
            ("127.255.255.255", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::127.0.0.1", Some(Loopback)),
            // private
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("fec0::1", Some(Private)),
            // link-local
            ("169.254.169.254", Some(LinkLocal)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            // CGNAT
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            // unique local
            ("fd00::1", Some(UniqueLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(UniqueLocal)),
            // multicast
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("ff05::1:3", Some(Multicast)),
            // broadcast
            ("255.255.255.255", Some(Broadcast)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            // reserved
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("192.0.0.1", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("198.19.255.255", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("2001:2::1", Some(Reserved)),
            ("2001:10::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("::ffff:0:7f00:1", Some(Reserved)),
            // documentation
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            // NAT64, 6to4, Teredo
            ("64:ff9b::7f00:1", Some(Nat64)),
            ("64:ff9b::808:808", Some(Nat64)),
            ("64:ff9b:1::1", Some(Nat64)),
            ("2002:7f00:1::1", Some(SixToFour)),
            ("2002:808:808::1", Some(SixToFour)),
            ("192.88.99.1", Some(SixToFour)),
            ("2001::1", Some(Teredo)),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Teredo)),
        ];
        assert!(table.len() >= 40);
        let mut seen = std::collections::HashSet::new();
        for (addr, want) in table {
            assert_eq!(classify(ip(addr)), *want, "{addr}");
            seen.insert(*want);
        }
        // Every class but ProxyItself (which depends on the policy, not the address) is covered.
        for class in AddrClass::ALL {
            if class != AddrClass::ProxyItself {
                assert!(seen.contains(&Some(class)), "{class:?} not in the table");
            }
        }
    }

    #[test]
    fn labels_are_distinct_and_describe_names_ranges() {
        let labels: std::collections::HashSet<_> =
            AddrClass::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), AddrClass::ALL.len());
        assert!(AddrClass::LinkLocal.describe().contains("169.254.0.0/16"));
        assert!(AddrClass::LinkLocal.describe().contains("metadata"));
        assert_eq!(AddrClass::SixToFour.label(), "6to4");
        assert_eq!(AddrClass::SharedCgnat.label(), "cgnat");
    }

    #[test]
    fn empty_policy_refuses_exactly_the_classified() {
        let policy = EgressPolicy::default();
        assert!(policy.check("8.8.8.8:443".parse().unwrap()).is_ok());
        assert!(policy
            .check("[2606:4700::1111]:443".parse().unwrap())
            .is_ok());
        let e = policy
            .check("169.254.169.254:80".parse().unwrap())
            .unwrap_err();
        assert_eq!(e.class, AddrClass::LinkLocal);
        assert_eq!(e.host, "169.254.169.254");
        let msg = e.to_string();
        assert!(msg.starts_with("169.254.169.254:80 is link-local"), "{msg}");
        assert!(msg.contains("`169.254.169.254/32`"), "{msg}");
        assert!(msg.contains("[proxy] allow_networks"), "{msg}");
        assert!(!msg.contains("resolves to it"), "{msg}");
    }

    #[test]
    fn allow_networks_opens_a_class_but_never_the_proxy_itself() {
        let own: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let policy = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8")],
            own_addresses: vec![own, "127.0.0.1:9090".parse().unwrap()],
        };
        assert!(policy.check("127.0.0.1:3000".parse().unwrap()).is_ok());
        assert!(policy.check("127.0.0.2:8080".parse().unwrap()).is_ok());
        for target in [
            "127.0.0.1:8080",
            "127.0.0.1:9090",
            "[::ffff:127.0.0.1]:8080",
        ] {
            let e = policy.check(target.parse().unwrap()).unwrap_err();
            assert_eq!(e.class, AddrClass::ProxyItself, "{target}");
            assert!(e.to_string().contains("cannot open it"), "{e}");
        }
        // Other classes stay shut; ::1 is not inside 127.0.0.0/8.
        assert_eq!(
            policy
                .check("10.0.0.1:80".parse().unwrap())
                .unwrap_err()
                .class,
            AddrClass::Private
        );
        assert_eq!(
            policy.check("[::1]:80".parse().unwrap()).unwrap_err().class,
            AddrClass::Loopback
        );
    }

    #[test]
    fn allow_networks_matches_mapped_v6_by_its_ipv4() {
        let policy = EgressPolicy {
            allow_networks: vec![net("10.0.0.0/8")],
            own_addresses: vec![],
        };
        assert!(policy
            .check("[::ffff:10.1.2.3]:80".parse().unwrap())
            .is_ok());
        assert!(policy.check("10.1.2.3:80".parse().unwrap()).is_ok());
        let e = policy
            .check("[::ffff:192.168.0.1]:80".parse().unwrap())
            .unwrap_err();
        assert_eq!(e.class, AddrClass::Private);
        assert!(e.to_string().contains("`192.168.0.1/32`"), "{e}");
    }

    #[test]
    fn wildcard_own_address_covers_local_targets_on_its_port() {
        let policy = EgressPolicy {
            allow_networks: vec![net("0.0.0.0/0"), net("::/0")],
            own_addresses: vec!["0.0.0.0:8080".parse().unwrap()],
        };
        for target in [
            "127.0.0.1:8080",
            "10.0.0.5:8080",
            "[::1]:8080",
            "0.0.0.0:8080",
        ] {
            let e = policy.check(target.parse().unwrap()).unwrap_err();
            assert_eq!(e.class, AddrClass::ProxyItself, "{target}");
        }
        // Another port is not us; a public address is not recognisable as us (documented limit).
        assert!(policy.check("127.0.0.1:8081".parse().unwrap()).is_ok());
        assert!(policy.check("8.8.8.8:8080".parse().unwrap()).is_ok());

        let v6_any = EgressPolicy {
            allow_networks: vec![],
            own_addresses: vec!["[::]:9000".parse().unwrap()],
        };
        assert_eq!(
            v6_any
                .check("127.0.0.1:9000".parse().unwrap())
                .unwrap_err()
                .class,
            AddrClass::ProxyItself
        );
        assert_eq!(
            v6_any
                .check("127.0.0.1:9001".parse().unwrap())
                .unwrap_err()
                .class,
            AddrClass::Loopback
        );
    }

    #[tokio::test]
    async fn resolve_localhost_is_loopback_unless_opened() {
        let shut = EgressPolicy::default();
        match shut.resolve("localhost", 443, T).await {
            Err(EgressError::Denied(d)) => {
                assert_eq!(d.class, AddrClass::Loopback);
                assert_eq!(d.host, "localhost");
                assert!(
                    d.to_string().contains("(`localhost` resolves to it)"),
                    "{d}"
                );
            }
            other => panic!("expected Denied, got {other:?}"),
        }
        let open = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8"), net("::1/128")],
            own_addresses: vec![],
        };
        let addrs = open.resolve("localhost", 443, T).await.unwrap();
        assert!(!addrs.is_empty());
        for a in &addrs {
            assert!(a.ip().is_loopback(), "{a}");
            assert_eq!(a.port(), 443);
        }
    }

    #[tokio::test]
    async fn resolve_ip_literals_without_lookup() {
        let open = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8"), net("::1/128")],
            own_addresses: vec![],
        };
        assert_eq!(
            open.resolve("127.0.0.1", 80, T).await.unwrap(),
            vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            open.resolve("[::1]", 80, T).await.unwrap(),
            vec!["[::1]:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            open.resolve("::1", 80, T).await.unwrap(),
            vec!["[::1]:80".parse::<SocketAddr>().unwrap()]
        );

        let shut = EgressPolicy::default();
        for (host, class) in [
            ("[::1]", AddrClass::Loopback),
            ("127.0.0.2", AddrClass::Loopback),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("[fd00::1]", AddrClass::UniqueLocal),
            ("[::ffff:127.0.0.1]", AddrClass::Loopback),
        ] {
            match shut.resolve(host, 80, T).await {
                Err(EgressError::Denied(d)) => {
                    assert_eq!(d.class, class, "{host}");
                    assert_eq!(d.host, host);
                    assert!(!d.to_string().contains("resolves to it"), "{d}");
                }
                other => panic!("{host}: expected Denied, got {other:?}"),
            }
        }
        // Public literals pass without any lookup or connection.
        assert_eq!(
            shut.resolve("[2606:4700::1111]", 443, T).await.unwrap(),
            vec!["[2606:4700::1111]:443".parse::<SocketAddr>().unwrap()]
        );

        assert!(matches!(
            shut.resolve("[localhost]", 80, T).await,
            Err(EgressError::Resolve { .. })
        ));
        assert!(matches!(
            shut.resolve("[::1", 80, T).await,
            Err(EgressError::Resolve { .. })
        ));
        assert!(matches!(
            shut.resolve("", 80, T).await,
            Err(EgressError::NoAddress { .. })
        ));
    }

    #[tokio::test]
    async fn dial_connects_only_to_checked_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();

        let shut = EgressPolicy::default();
        match shut.dial("127.0.0.1", target.port(), T).await {
            Err(EgressError::Denied(d)) => assert_eq!(d.class, AddrClass::Loopback),
            other => panic!("expected Denied, got {other:?}"),
        }
        // Not the proxy itself: a wildcard own address on another port does not matter.
        let own_elsewhere = EgressPolicy {
            allow_networks: vec![],
            own_addresses: vec!["0.0.0.0:1".parse().unwrap()],
        };
        assert!(own_elsewhere
            .dial("localhost", target.port(), T)
            .await
            .is_err());
        let nothing = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(nothing.is_err(), "a refused dial reached the listener");

        let open = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8")],
            own_addresses: vec![],
        };
        let stream = open.dial("127.0.0.1", target.port(), T).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), target);
        assert!(stream.nodelay().unwrap());
        let (_, from) = tokio::time::timeout(T, listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, stream.local_addr().unwrap());
    }

    #[tokio::test]
    async fn dial_the_proxy_itself_is_refused_even_when_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let own = listener.local_addr().unwrap();
        let policy = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8")],
            own_addresses: vec![own],
        };
        match policy.dial("127.0.0.1", own.port(), T).await {
            Err(EgressError::Denied(d)) => assert_eq!(d.class, AddrClass::ProxyItself),
            other => panic!("expected Denied, got {other:?}"),
        }
        let nothing = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(nothing.is_err(), "a refused dial reached the listener");
    }

    #[tokio::test]
    async fn dial_refused_port_is_a_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let open = EgressPolicy {
            allow_networks: vec![net("127.0.0.0/8")],
            own_addresses: vec![],
        };
        match open.dial("127.0.0.1", port, T).await {
            Err(EgressError::Connect { addr, source }) => {
                assert_eq!(addr.port(), port);
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    fn a_denial() -> EgressDenied {
        EgressDenied {
            host: "metadata.internal".to_string(),
            addr: "169.254.169.254:80".parse().unwrap(),
            class: AddrClass::LinkLocal,
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error")]
    struct Wrapper {
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    }

    #[test]
    fn find_denied_through_io_error_and_boxed_chain() {
        let io_err: io::Error = EgressError::from(a_denial()).into();
        assert_eq!(io_err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            find_denied(&io_err).map(|d| d.class),
            Some(AddrClass::LinkLocal)
        );
        assert!(io_err
            .get_ref()
            .and_then(|e| e.downcast_ref::<EgressError>())
            .is_some());

        let chained = Wrapper {
            source: Box::new(Wrapper {
                source: Box::new(io_err),
            }),
        };
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(chained);
        let found = find_denied(&*boxed).unwrap();
        assert_eq!(found.host, "metadata.internal");

        let bare = Wrapper {
            source: Box::new(a_denial()),
        };
        assert!(find_denied(&bare).is_some());
        assert!(find_denied(&a_denial()).is_some());
    }

    #[test]
    fn find_denied_ignores_other_failures() {
        let timeout: io::Error = EgressError::Timeout {
            addr: "127.0.0.1:1".parse().unwrap(),
            timeout: Duration::from_secs(1),
        }
        .into();
        assert_eq!(timeout.kind(), io::ErrorKind::TimedOut);
        assert!(find_denied(&timeout).is_none());
        let refused: io::Error = EgressError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
        .into();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(find_denied(&Wrapper {
            source: Box::new(refused)
        })
        .is_none());
        assert!(find_denied(&io::Error::other("plain")).is_none());
    }

    fn v6_strategy() -> impl Strategy<Value = Ipv6Addr> {
        // Uniform u128s land almost only in unallocated space, so also aim at the prefixes the
        // rules care about, keeping the rest of the address random.
        let prefixes: Vec<(u128, u32)> = [
            ("::", 96),
            ("::ffff:0:0", 96),
            ("64:ff9b::", 96),
            ("64:ff9b:1::", 48),
            ("100::", 64),
            ("2000::", 3),
            ("2001::", 23),
            ("2001:db8::", 32),
            ("2002::", 16),
            ("fc00::", 7),
            ("fe80::", 10),
            ("fec0::", 10),
            ("ff00::", 8),
        ]
        .iter()
        .map(|(p, len)| (u128::from(Ipv6Addr::from_str(p).unwrap()), *len))
        .collect();
        prop_oneof![
            any::<u128>().prop_map(Ipv6Addr::from),
            (proptest::sample::select(prefixes), any::<u128>()).prop_map(|((base, len), low)| {
                let host_mask = u128::MAX >> len;
                Ipv6Addr::from(base | (low & host_mask))
            }),
        ]
    }

    proptest! {
        #[test]
        fn v4_agrees_with_std(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            let class = classify(IpAddr::V4(v4));
            if v4.is_loopback() || v4.is_unspecified() || v4.is_multicast()
                || v4.is_private() || v4.is_link_local() || v4.is_broadcast()
                || v4.is_documentation()
            {
                prop_assert!(class.is_some(), "{} classified public", v4);
            }
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), class);
        }

        #[test]
        fn v6_agrees_with_std(v6 in v6_strategy()) {
            let class = classify(IpAddr::V6(v6));
            let seg0 = v6.segments()[0];
            // Bit tests rather than is_unicast_link_local()/is_unique_local(): those need Rust
            // 1.84 and the crate's rust-version is older.
            let link_local = seg0 & 0xffc0 == 0xfe80;
            let unique_local = seg0 & 0xfe00 == 0xfc00;
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
                || link_local || unique_local
            {
                prop_assert!(class.is_some(), "{} classified public", v6);
            }
            if class.is_none() {
                // Public IPv6 is global unicast, or an IPv4 in an embedding form.
                prop_assert!(seg0 >> 13 == 0b001 || embedded_v4(v6).is_some(), "{}", v6);
            }
        }

        #[test]
        fn empty_policy_denies_iff_classified(bits in any::<u128>(), port in any::<u16>()) {
            let ip = IpAddr::V6(Ipv6Addr::from(bits));
            let checked = EgressPolicy::default().check(SocketAddr::new(ip, port));
            prop_assert_eq!(checked.err().map(|d| d.class), classify(ip));
        }

        #[test]
        fn allow_all_opens_everything_but_self(bits in any::<u32>(), port in 1u16..) {
            let ip = IpAddr::V4(Ipv4Addr::from(bits));
            let own = SocketAddr::new(ip, port);
            let policy = EgressPolicy {
                allow_networks: vec![net("0.0.0.0/0")],
                own_addresses: vec![own],
            };
            prop_assert_eq!(
                policy.check(own).err().map(|d| d.class),
                Some(AddrClass::ProxyItself)
            );
            let other_port = SocketAddr::new(ip, port - 1);
            prop_assert!(policy.check(other_port).is_ok());
        }
    }
}
