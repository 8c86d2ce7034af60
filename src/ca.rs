//! The local certificate authority for HTTPS interception: loaded from `[mitm] ca_cert`/`ca_key`
//! or created on first use (key mode 0600), issuing one cached leaf certificate per host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::MitmSettings;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS setup for `{host}` failed: {message}")]
    Tls { host: String, message: String },
}

/// The CA and its per-host leaf cache.
pub struct CertificateAuthority {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA named by the settings, creating it there first if neither file exists.
    pub fn load_or_create(settings: &MitmSettings) -> Result<Self, CaError> {
        let (cert_path, key_path) = (&settings.ca_cert, &settings.ca_key);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(cert_path, key_path),
            (false, false) => Self::create(cert_path, key_path),
            (true, false) => Err(missing_pair(key_path, cert_path)),
            (false, true) => Err(missing_pair(cert_path, key_path)),
        }
    }

    /// Creates a new CA and writes it (refusing to overwrite an existing one).
    pub fn create(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        if cert_path.exists() || key_path.exists() {
            return Err(CaError::File {
                path: cert_path.to_path_buf(),
                message: "a CA already exists here; remove both files first to make a new one"
                    .into(),
            });
        }
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
        let now = time_now();
        params.not_before = now - rcgen_days(1);
        params.not_after = now + rcgen_days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let cert_pem = cert.pem();
        write_file(cert_path, cert_pem.as_bytes(), 0o644)?;
        write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(CertificateAuthority {
            cert,
            key,
            cert_pem,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| CaError::File {
                path: path.to_path_buf(),
                message: format!("cannot read ({e})"),
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::File {
            path: key_path.to_path_buf(),
            message: format!("not a PEM private key ({e})"),
        })?;
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
        let chain = vec![leaf.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| fail(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
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

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let fail = |e: std::io::Error| CaError::File {
        path: path.to_path_buf(),
        message: format!("cannot write ({e})"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(fail)?;
    std::io::Write::write_all(&mut file, bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> MitmSettings {
        MitmSettings {
            ca_cert: dir.join("ca-cert.pem"),
            ca_key: dir.join("ca-key.pem"),
        }
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
