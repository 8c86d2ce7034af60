//! The local certificate authority for HTTPS interception: loaded from `[mitm] ca_cert`/`ca_key`
//! or created on first use (key mode 0600), issuing one cached leaf certificate per host.
//!
//! A CA signproxy creates carries critical X.509 name constraints naming only the hosts the
//! profiles serve, so its key, if it leaks, cannot mint a certificate that a client trusting it
//! would accept for any other site (nor for any IP address, unless a profile serves one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use crate::config::{HostPattern, MitmSettings};
use crate::state_dir::{create_private_dir, exposure_warning};

/// Permitted when no profile serves any host: a reserved name (RFC 6761), so the CA vouches for
/// nothing real.
const NO_HOST: &str = "invalid";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS setup for `{host}` failed: {message}")]
    Tls { host: String, message: String },
    #[error("{}: not a PEM certificate ({source})", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: not a readable X.509 certificate ({source})", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{}: cannot read its name constraints ({source})", path.display())]
    Constraints {
        path: PathBuf,
        #[source]
        source: x509_parser::error::X509Error,
    },
    #[error(
        "{}: this CA's name constraints do not permit {}: replace it with `signproxy ca init --force` \
         (clients must then trust the new certificate), or set a new [proxy] state_dir \
         (or [mitm] ca_cert/ca_key) so that signproxy creates a CA for these hosts there",
        path.display(),
        hosts.join(", ")
    )]
    HostsNotPermitted { path: PathBuf, hosts: Vec<String> },
}

/// The CA and its per-host leaf cache.
pub struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
    warnings: Vec<String>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA named by the settings, creating it there first if neither file exists. An
    /// existing CA must permit every configured host.
    pub fn load_or_create(settings: &MitmSettings) -> Result<Self, CaError> {
        let (cert_path, key_path) = (&settings.ca_cert, &settings.ca_key);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(settings),
            (false, false) => Self::create(settings),
            (true, false) => Err(missing_pair(key_path, cert_path)),
            (false, true) => Err(missing_pair(cert_path, key_path)),
        }
    }

    /// Creates a new CA for the configured hosts and writes it (refusing to overwrite one).
    pub fn create(settings: &MitmSettings) -> Result<Self, CaError> {
        if settings.ca_cert.exists() || settings.ca_key.exists() {
            return Err(CaError::File {
                path: settings.ca_cert.to_path_buf(),
                message: "a CA already exists here; `signproxy ca init --force` replaces it".into(),
            });
        }
        Self::generate(settings, false)
    }

    /// Creates a new CA for the configured hosts in place of whatever is there.
    pub fn replace(settings: &MitmSettings) -> Result<Self, CaError> {
        Self::generate(settings, true)
    }

    /// What `load_or_create` would find wrong or warn about, without creating anything or
    /// reading the key (so `check` can run where the key is not readable): the warnings, or the
    /// error that would stop `run`.
    pub fn inspect(settings: &MitmSettings) -> Result<Vec<String>, CaError> {
        let (cert_path, key_path) = (&settings.ca_cert, &settings.ca_key);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => Ok(Vec::new()),
            (true, false) => Err(missing_pair(key_path, cert_path)),
            (false, true) => Err(missing_pair(cert_path, key_path)),
            (true, true) => {
                let der = cert_der(cert_path, &read(cert_path)?)?;
                let x509 = parse_cert(cert_path, &der)?;
                let mut warnings = check_constraints(cert_path, &x509, &settings.permitted_hosts)?;
                warnings.extend(exposure_warning(key_path, "the CA private key"));
                Ok(warnings)
            }
        }
    }

    /// Things to fix that did not stop loading (a key others can read, a CA without name
    /// constraints).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn generate(settings: &MitmSettings, replace: bool) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "signproxy local CA");
        dn.push(DnType::OrganizationName, "signproxy");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(name_constraints(&settings.permitted_hosts));
        let now = time_now();
        params.not_before = now - rcgen_days(1);
        params.not_after = now + rcgen_days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let cert_pem = cert.pem();
        // Key first: a crash between the two leaves the old certificate, which `load` then
        // refuses to pair with the new key rather than serving leaves no client trusts.
        write_file(
            &settings.ca_key,
            key.serialize_pem().as_bytes(),
            0o600,
            replace,
        )?;
        write_file(&settings.ca_cert, cert_pem.as_bytes(), 0o644, replace)?;
        Ok(CertificateAuthority {
            cert,
            key,
            cert_pem,
            warnings: Vec::new(),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    fn load(settings: &MitmSettings) -> Result<Self, CaError> {
        let (cert_path, key_path) = (&settings.ca_cert, &settings.ca_key);
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::File {
            path: key_path.to_path_buf(),
            message: format!("not a PEM private key ({e})"),
        })?;
        let der = cert_der(cert_path, &cert_pem)?;
        let x509 = parse_cert(cert_path, &der)?;
        // rcgen would happily sign with any key; leaves from the wrong one reach no client.
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::File {
                path: key_path.to_path_buf(),
                message: format!(
                    "is not the key of {}: restore the matching pair, or replace both with `signproxy ca init --force`",
                    cert_path.display()
                ),
            });
        }
        let mut warnings = check_constraints(cert_path, &x509, &settings.permitted_hosts)?;
        warnings.extend(exposure_warning(key_path, "the CA private key"));
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| CaError::File {
            path: cert_path.to_path_buf(),
            message: format!("not a PEM CA certificate ({e})"),
        })?;
        // Re-signing the parsed params gives rcgen an issuer object with the same name and key
        // as the certificate clients trust; leaves chain to that.
        let cert = params.self_signed(&key).map_err(|e| CaError::File {
            path: key_path.to_path_buf(),
            message: format!("the key does not fit the CA certificate ({e})"),
        })?;
        Ok(CertificateAuthority {
            cert,
            key,
            cert_pem,
            warnings,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate as clients should trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config presenting a leaf for `host`, issued on first use and cached.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some(found) = self.lock_leaves().get(&host) {
            return Ok(Arc::clone(found));
        }
        let config = Arc::new(self.issue(&host)?);
        self.lock_leaves().insert(host, Arc::clone(&config));
        Ok(config)
    }

    fn lock_leaves(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<rustls::ServerConfig>>> {
        // A panic while holding the lock cannot leave the map half-updated: inserts are atomic.
        self.leaves
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn issue(&self, host: &str) -> Result<rustls::ServerConfig, CaError> {
        let fail = |message: String| CaError::Tls {
            host: host.to_owned(),
            message,
        };
        let (leaf, key) = self.issue_leaf(host)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf], private)
        .map_err(|e| fail(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A leaf certificate for `host` and its key.
    fn issue_leaf(&self, host: &str) -> Result<(CertificateDer<'static>, KeyPair), CaError> {
        let fail = |message: String| CaError::Tls {
            host: host.to_owned(),
            message,
        };
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| fail(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time_now();
        params.not_before = now - rcgen_days(1);
        // Clients (Apple's, notably) refuse leaves valid for more than 398 days.
        params.not_after = now + rcgen_days(397);
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| fail(e.to_string()))?;
        Ok((leaf.der().clone(), key))
    }
}

fn missing_pair(missing: &Path, present: &Path) -> CaError {
    CaError::File {
        path: missing.to_path_buf(),
        message: format!(
            "is missing while {} exists: restore it, or remove both to have signproxy create a new CA",
            present.display()
        ),
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::File {
        path: path.to_path_buf(),
        message: format!("cannot read ({e})"),
    })
}

fn cert_der(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| CaError::Pem {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_cert<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CaError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|source| CaError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// The constraints a new CA gets: the hosts' DNS subtrees (`*.example.com` permits
/// `example.com`'s subtree), and every IP address excluded, so the key cannot vouch for an
/// address either (host patterns never name addresses).
fn name_constraints(hosts: &[HostPattern]) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = hosts
        .iter()
        .map(|pattern| {
            let text = pattern.to_string();
            GeneralSubtree::DnsName(text.strip_prefix("*.").unwrap_or(&text).to_owned())
        })
        .collect();
    if permitted.is_empty() {
        permitted.push(GeneralSubtree::DnsName(NO_HOST.to_owned()));
    }
    let excluded = vec![
        GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
        GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
    ];
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// Checks an existing CA against the configured hosts: an error when its name constraints leave
/// some host out (clients would reject the leaf), a warning when it has none at all.
fn check_constraints(
    path: &Path,
    cert: &x509_parser::certificate::X509Certificate<'_>,
    hosts: &[HostPattern],
) -> Result<Vec<String>, CaError> {
    let constraints = cert
        .name_constraints()
        .map_err(|source| CaError::Constraints {
            path: path.to_path_buf(),
            source,
        })?;
    let Some(constraints) = constraints else {
        return Ok(vec![format!(
            "{} has no name constraints (made by an older signproxy, or elsewhere): anyone who \
             obtains its key can mint certificates your clients accept for any site; \
             `signproxy ca init --force` replaces it with a CA limited to the profiles' hosts \
             (clients must then trust the new certificate)",
            path.display()
        )]);
    };
    fn subtrees<'a>(
        list: &Option<Vec<x509_parser::extensions::GeneralSubtree<'a>>>,
    ) -> Vec<GeneralName<'a>> {
        list.iter().flatten().map(|s| s.base.clone()).collect()
    }
    let (permitted, excluded) = (
        subtrees(&constraints.value.permitted_subtrees),
        subtrees(&constraints.value.excluded_subtrees),
    );
    let uncovered: Vec<String> = hosts
        .iter()
        .map(|h| h.to_string())
        .filter(|h| !permits(&permitted, &excluded, h))
        .collect();
    if uncovered.is_empty() {
        Ok(Vec::new())
    } else {
        Err(CaError::HostsNotPermitted {
            path: path.to_path_buf(),
            hosts: uncovered,
        })
    }
}

/// Whether constraints with these subtrees let a client accept a leaf for every host `pattern`
/// matches (RFC 5280 4.2.1.10: each name form is constrained only by subtrees of that form).
fn permits(permitted: &[GeneralName<'_>], excluded: &[GeneralName<'_>], pattern: &str) -> bool {
    let (name, wildcard) = match pattern.strip_prefix("*.") {
        Some(base) => (base.to_ascii_lowercase(), true),
        None => (pattern.to_ascii_lowercase(), false),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let within = |g: &GeneralName<'_>| match g {
            GeneralName::IPAddress(range) if range.len() == octets.len() * 2 => {
                let (net, mask) = range.split_at(octets.len());
                octets
                    .iter()
                    .zip(net.iter().zip(mask))
                    .all(|(a, (n, m))| a & m == n & m)
            }
            _ => false,
        };
        let has_ip_subtrees = permitted
            .iter()
            .any(|g| matches!(g, GeneralName::IPAddress(_)));
        return (!has_ip_subtrees || permitted.iter().any(within)) && !excluded.iter().any(within);
    }
    let dns = |list: &[GeneralName<'_>]| -> Vec<String> {
        list.iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    };
    let (allowed, denied) = (dns(permitted), dns(excluded));
    let covered = allowed.is_empty()
        || allowed.iter().any(|c| {
            if wildcard {
                holds_every_name_below(c, &name)
            } else {
                holds(c, &name)
            }
        });
    let hit = denied.iter().any(|e| {
        if wildcard {
            // Any overlap excludes some name the pattern matches.
            let base = e.trim_start_matches('.');
            base.is_empty() || holds(base, &name) || base.ends_with(&format!(".{name}"))
        } else {
            holds(e, &name)
        }
    });
    covered && !hit
}

/// Whether the DNS subtree `constraint` holds `name` (a leading dot: only names below it).
fn holds(constraint: &str, name: &str) -> bool {
    match constraint.strip_prefix('.') {
        _ if constraint.is_empty() => true,
        Some(_) => name.ends_with(constraint),
        None => name == constraint || name.ends_with(&format!(".{constraint}")),
    }
}

/// Whether the DNS subtree `constraint` holds every name below `base`.
fn holds_every_name_below(constraint: &str, base: &str) -> bool {
    match constraint.strip_prefix('.') {
        Some(parent) => base == parent || base.ends_with(constraint),
        None => holds(constraint, base),
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

/// Writes `path` with `mode`. Without `replace` an existing file is an error; with it the new
/// contents go to a fresh temp file first and are renamed over the old one, so a reader never
/// sees half a key.
fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let fail = |e: std::io::Error| CaError::File {
        path: path.to_path_buf(),
        message: format!("cannot write ({e})"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(fail)?;
    }
    let target = if replace {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        let tmp = path.with_file_name(name);
        // A leftover from an interrupted run may have other permissions: start afresh.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        tmp
    } else {
        path.to_path_buf()
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&target).map_err(fail)?;
    std::io::Write::write_all(&mut file, bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    if replace {
        std::fs::rename(&target, path).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIKTOK: &str = "open-api.tiktokglobalshop.com";

    fn hosts(patterns: &[&str]) -> Vec<HostPattern> {
        patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect()
    }

    fn settings_for(dir: &Path, patterns: &[&str]) -> MitmSettings {
        MitmSettings {
            ca_cert: dir.join("ca-cert.pem"),
            ca_key: dir.join("ca-key.pem"),
            permitted_hosts: hosts(patterns),
        }
    }

    fn settings(dir: &Path) -> MitmSettings {
        settings_for(dir, &[TIKTOK, "*.example.com"])
    }

    /// rustls's own WebPKI verifier, trusting only the PEM certificate `ca_pem`.
    fn verify(ca_pem: &str, leaf: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
        verifier
            .verify_server_cert(leaf, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .map(|_| ())
    }

    /// A leaf for `san` signed with the CA key on disk, made with rcgen directly: what someone
    /// holding a leaked key could do, with no signproxy code involved. `constrained: false`
    /// signs it as an unconstrained CA of the same name and key would.
    fn minted_with_the_key(
        s: &MitmSettings,
        san: &str,
        constrained: bool,
    ) -> (String, CertificateDer<'static>) {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&s.ca_key).unwrap()).unwrap();
        let mut ca_params =
            CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(&s.ca_cert).unwrap())
                .unwrap();
        assert!(ca_params.name_constraints.is_some());
        if !constrained {
            ca_params.name_constraints = None;
        }
        let issuer = ca_params.self_signed(&key).unwrap();
        let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
        params.is_ca = IsCa::NoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &issuer, &key).unwrap();
        (issuer.pem(), leaf.der().clone())
    }

    #[test]
    fn leaves_verify_for_profile_hosts_and_a_leaked_key_cannot_mint_for_other_sites() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let ca = CertificateAuthority::load_or_create(&s).unwrap();
        for host in [TIKTOK, "shop.example.com", "a.b.example.com", "example.com"] {
            let (leaf, _) = ca.issue_leaf(host).unwrap();
            verify(ca.cert_pem(), &leaf, host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for san in [
            "evil.example",
            "example.com.evil.example",
            "api.ebay.com",
            "10.0.0.1",
            "::1",
        ] {
            let (_, leaf) = minted_with_the_key(&s, san, true);
            let e = verify(ca.cert_pem(), &leaf, san).expect_err(san);
            assert!(
                format!("{e:?}").contains("NameConstraintViolation"),
                "{san}: {e:?}"
            );
            // Our own issuer is no way around it either.
            let (ours, _) = ca.issue_leaf(san).unwrap();
            assert!(verify(ca.cert_pem(), &ours, san).is_err(), "{san}");
        }
        // The same leaf under the same name and key without constraints is accepted: the
        // constraints, nothing else about the leaf, are what stops it.
        let (unconstrained_ca, leaf) = minted_with_the_key(&s, "evil.example", false);
        verify(&unconstrained_ca, &leaf, "evil.example").unwrap();
    }

    #[test]
    fn an_existing_ca_must_permit_every_configured_host() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(&settings(dir.path())).unwrap();
        let fine = settings_for(dir.path(), &[TIKTOK, "x.example.com", "*.y.example.com"]);
        assert!(CertificateAuthority::load_or_create(&fine)
            .unwrap()
            .warnings()
            .is_empty());
        let more = settings_for(
            dir.path(),
            &[TIKTOK, "api.ebay.com", "*.ebay.com", "example.com"],
        );
        for e in [
            CertificateAuthority::load_or_create(&more).unwrap_err(),
            CertificateAuthority::inspect(&more).unwrap_err(),
        ] {
            let m = e.to_string();
            assert!(
                m.contains("api.ebay.com, *.ebay.com") && !m.contains(TIKTOK),
                "{m}"
            );
            assert!(
                m.contains("signproxy ca init --force") && m.contains("[proxy] state_dir"),
                "{m}"
            );
            assert!(m.contains(&more.ca_cert.display().to_string()), "{m}");
        }
    }

    #[test]
    fn which_subtrees_permit_which_patterns() {
        let dns = |d: &'static str| GeneralName::DNSName(d);
        let permitted = [dns("x.example.com"), dns(".shop.example"), dns("ebay.com")];
        let ok = |p: &str| permits(&permitted, &[], p);
        assert!(ok("x.example.com") && ok("a.x.example.com") && ok("*.x.example.com"));
        assert!(!ok("example.com") && !ok("*.example.com") && !ok("y.example.com"));
        assert!(ok("a.shop.example") && ok("*.shop.example") && !ok("shop.example"));
        assert!(ok("api.ebay.com") && ok("ebay.com") && ok("*.ebay.com") && !ok("xebay.com"));
        let excluded = [dns("bad.ebay.com")];
        assert!(!permits(&permitted, &excluded, "*.ebay.com"));
        assert!(!permits(&permitted, &excluded, "x.bad.ebay.com"));
        assert!(permits(&permitted, &excluded, "api.ebay.com"));
        let ip = [GeneralName::IPAddress(&[10, 0, 0, 0, 255, 0, 0, 0])];
        assert!(permits(&ip, &[], "10.1.2.3"));
        assert!(!permits(&ip, &[], "11.1.2.3"));
        assert!(permits(&ip, &[], "api.ebay.com"), "DNS names unconstrained");
        assert!(!permits(&[], &ip, "10.1.2.3"));
    }

    #[test]
    fn created_once_then_loaded_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let first = CertificateAuthority::load_or_create(&s).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&s.ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = CertificateAuthority::load_or_create(&s).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        let a = again
            .server_config("open-api.tiktokglobalshop.com")
            .unwrap();
        let b = again
            .server_config("OPEN-API.tiktokglobalshop.com")
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "leaf configs are cached per host");
    }

    #[test]
    fn a_ca_without_name_constraints_still_loads_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        // What an older signproxy made: no name constraints.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "signproxy local CA");
        let cert = params.self_signed(&key).unwrap();
        write_file(&s.ca_cert, cert.pem().as_bytes(), 0o644, false).unwrap();
        write_file(&s.ca_key, key.serialize_pem().as_bytes(), 0o600, false).unwrap();
        let ca = CertificateAuthority::load_or_create(&s).unwrap();
        assert_eq!(ca.warnings().len(), 1, "{:?}", ca.warnings());
        let w = &ca.warnings()[0];
        assert!(
            w.contains("no name constraints") && w.contains("signproxy ca init --force"),
            "{w}"
        );
        assert_eq!(CertificateAuthority::inspect(&s).unwrap(), ca.warnings());
    }

    #[test]
    fn replace_writes_a_new_private_ca_for_the_new_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let old =
            CertificateAuthority::load_or_create(&settings_for(dir.path(), &[TIKTOK])).unwrap();
        let wider = settings_for(dir.path(), &[TIKTOK, "api.ebay.com"]);
        assert!(CertificateAuthority::load_or_create(&wider).is_err());
        let e = CertificateAuthority::create(&wider)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force"), "{e}");
        let new = CertificateAuthority::replace(&wider).unwrap();
        assert_ne!(old.cert_pem(), new.cert_pem());
        let loaded = CertificateAuthority::load_or_create(&wider).unwrap();
        assert_eq!(loaded.cert_pem(), new.cert_pem());
        assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
        let (leaf, _) = loaded.issue_leaf("api.ebay.com").unwrap();
        verify(loaded.cert_pem(), &leaf, "api.ebay.com").unwrap();
        assert!(!dir.path().join("ca-key.pem.new").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_warned_about_and_a_folder_made_for_it_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("fresh").join("state");
        let s = settings(&state);
        CertificateAuthority::load_or_create(&s).unwrap();
        for dir in [root.path().join("fresh"), state.clone()] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        assert!(CertificateAuthority::load_or_create(&s)
            .unwrap()
            .warnings()
            .is_empty());
        std::fs::set_permissions(&s.ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ca = CertificateAuthority::load_or_create(&s).unwrap();
        let expected = format!("chmod 600 {}", s.ca_key.display());
        assert!(
            ca.warnings().len() == 1 && ca.warnings()[0].contains(&expected),
            "{:?}",
            ca.warnings()
        );
        assert_eq!(CertificateAuthority::inspect(&s).unwrap(), ca.warnings());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        CertificateAuthority::load_or_create(&s).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(&s.ca_key, other.serialize_pem()).unwrap();
        let e = CertificateAuthority::load_or_create(&s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not the key of") && e.contains("--force"),
            "{e}"
        );
    }

    #[test]
    fn half_a_pair_is_an_error_not_an_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        std::fs::write(&s.ca_cert, "x").unwrap();
        let e = CertificateAuthority::load_or_create(&s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca-key.pem") && e.contains("is missing"), "{e}");
        assert_eq!(std::fs::read_to_string(&s.ca_cert).unwrap(), "x");
    }
}
