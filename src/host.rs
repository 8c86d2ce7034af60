//! Host names as configured and as requested: [`HostPattern`] (exact or `*.suffix`, never an
//! address) and [`is_ip_literal`].

use std::fmt;

/// An exact host name, or `*.example.com` for any name below `example.com`. Case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(format!(
                "`{text}` is not a host pattern: use a host name such as `api.example.com` \
                 or `*.example.com` (no scheme, port or path)"
            ));
        }
        if is_ip_literal(bare) {
            return Err(format!(
                "`{text}` is an IP address, and host patterns only match names: to let \
                 passthrough reach an address, list its network in [proxy] allow_networks"
            ));
        }
        Ok(HostPattern(lower))
    }

    /// Never true for an IP literal: `*.0.1` must not match `127.0.0.1`.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        if is_ip_literal(host) {
            return false;
        }
        match self.0.strip_prefix("*.") {
            Some(suffix) => {
                // Bytes, not `str` slices: a non-ASCII host would put the cut inside a character.
                let host = host.as_bytes();
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && host[host.len() - suffix.len() - 1] == b'.'
            }
            None => host.eq_ignore_ascii_case(&self.0),
        }
    }
}

/// `127.0.0.1`, `::1`, `[::1]`, and the shorthand IPv4 forms resolvers accept (`127.1`,
/// `0x7f.1`, `2130706433`): a name made only of digits, hex and dots is never a DNS name here.
pub fn is_ip_literal(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let last = bare
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or("")
        .as_bytes();
    // A real top-level domain is never numeric (RFC 3696 §2): treat such names as addresses.
    // Bytes, not `str` slices: a non-ASCII label would put a cut inside a character.
    !last.is_empty()
        && (last.iter().all(u8::is_ascii_digit)
            || (last.len() > 2
                && last[..2].eq_ignore_ascii_case(b"0x")
                && last[2..].iter().all(u8::is_ascii_hexdigit)))
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
