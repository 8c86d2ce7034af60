//! `signproxy ebay create-key`: a signing key from eBay's Key Management API, written into the
//! state folder (private key 0600, never printed), and the profile lines that use it.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Arg, ArgAction, ArgMatches};
use http::{header, HeaderValue, Method, Request};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::keys::load_private_key;
use crate::marketplace::tool::{Tool, ToolContext, ToolFuture};
use crate::marketplace::TokenSource;
use crate::secret::Secret;

/// The registry's `create-key`.
pub static CREATE_KEY: CreateKey = CreateKey;
/// eBay's commands, for [`super::Ebay`]'s `tools`.
pub static TOOLS: [&dyn Tool; 1] = [&CREATE_KEY];

pub struct CreateKey;

const KEY_PATH: &str = "/developer/key_management/v1/signing_key";

impl Tool for CreateKey {
    fn command(&self) -> clap::Command {
        clap::Command::new("create-key")
            .about(
                "Create a signing key with eBay's Key Management API (application token from the \
                 profile's client_id and client_secret), write the private key and its JWE into \
                 the state folder, and print the profile lines that use them",
            )
            .arg(
                Arg::new("cipher")
                    .long("cipher")
                    .value_parser(["ed25519", "rsa"])
                    .default_value("ed25519")
                    .help("The key type: ed25519 (eBay's advice: shorter headers) or rsa"),
            )
            .arg(
                Arg::new("force")
                    .long("force")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Create another key although the state folder holds one create-key made \
                         for the profile before (its files stay)",
                    ),
            )
    }

    fn run<'a>(
        &'a self,
        args: &'a ArgMatches,
        cx: ToolContext<'a>,
    ) -> ToolFuture<'a, Result<String, String>> {
        let cipher = match args.get_one::<String>("cipher").map(String::as_str) {
            Some("rsa") => Cipher::Rsa,
            _ => Cipher::Ed25519,
        };
        let force = args.get_flag("force");
        Box::pin(create_key(cx, cipher, force))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Ed25519,
    Rsa,
}

impl Cipher {
    /// As the Key Management API names it.
    fn wire(self) -> &'static str {
        match self {
            Cipher::Ed25519 => "ED25519",
            Cipher::Rsa => "RSA",
        }
    }
}

/// The answer's fields signproxy uses (`publicKey` and `creationTime` are not needed). Read
/// leniently: once eBay made the key, only a missing private key or JWE may stop the run.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SigningKey {
    signing_key_id: Option<String>,
    private_key: Option<String>,
    jwe: Option<String>,
    expiration_time: Option<serde_json::Value>,
}

/// The last second `httpdate` (and a person) can read: a larger value is no Unix time in seconds.
pub const LATEST_EXPIRY: u64 = 253_402_300_799;

impl SigningKey {
    /// `expirationTime` in Unix seconds, when it is one.
    fn expires_at(&self) -> Option<u64> {
        let at = match self.expiration_time.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }?;
        (at <= LATEST_EXPIRY).then_some(at)
    }

    /// The key id as a file name part: eBay's id when it is plain, else a digest of it.
    fn file_id(&self) -> String {
        let id = self.signing_key_id.as_deref().unwrap_or_default();
        let plain = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if plain {
            id.to_owned()
        } else {
            use sha2::{Digest as _, Sha256};
            let digest = Sha256::digest(self.jwe.as_deref().unwrap_or_default());
            hex::encode(&digest[..8])
        }
    }
}

/// Files of keys create-key made for `profile` earlier: `PROFILE.signing-key.ID.pem`.
fn earlier_keys(state_dir: &Path, profile: &str) -> Vec<PathBuf> {
    let prefix = format!("{profile}.signing-key.");
    let Ok(entries) = fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".pem"))
        })
        .collect();
    found.sort();
    found
}

async fn create_key(cx: ToolContext<'_>, cipher: Cipher, force: bool) -> Result<String, String> {
    // Checked before eBay makes a key: a key made and then not kept would be lost for good.
    let prefix = file_name_part(cx.profile);
    let earlier = earlier_keys(cx.state_dir, &prefix);
    if let (Some(last), false) = (earlier.last(), force) {
        return Err(format!(
            "{} holds a signing key create-key made for [{}] before: pass --force to create \
             another (earlier key files are never overwritten, so the config can go back to them)",
            last.display(),
            cx.profile
        ));
    }
    probe_writable(cx.state_dir)?;
    let (token, sandbox) = application_token(&cx).await?;
    let host = if sandbox {
        "apiz.sandbox.ebay.com"
    } else {
        "apiz.ebay.com"
    };
    let request = key_request(host, &token, cipher)?;
    let (status, body) = cx
        .upstream
        .exchange(request, "eBay's Key Management API")
        .await?;
    if !status.is_success() {
        let hint = match (status.as_u16(), cx.token) {
            (401 | 403, TokenSource::Static(_)) => {
                " (the Key Management API takes an application token: give the profile \
                 client_id and client_secret instead of access_token)"
            }
            _ => "",
        };
        return Err(format!(
            "eBay's Key Management API refused to create a key (HTTP {}): {}{hint}",
            status.as_u16(),
            ebay_error(&body)
        ));
    }
    let mut created: SigningKey = serde_json::from_slice(&body).map_err(|e| {
        format!("eBay's Key Management API answered with JSON signproxy does not understand: {e}")
    })?;
    let private_key = created.private_key.take().map(Zeroizing::new).ok_or(
        "eBay's Key Management API answered without a privateKey: it returns one only when a key \
         is created; create another",
    )?;
    let stem = format!("{prefix}.signing-key.{}", created.file_id());
    let absolute = |name: String| {
        let path = cx.state_dir.join(name);
        std::path::absolute(&path).unwrap_or(path)
    };
    let key_path = absolute(format!("{stem}.pem"));
    let jwe_path = absolute(format!("{stem}.jwe"));
    // eBay's only copy of the private key goes to disk first, whatever else is wrong with the
    // answer: as PEM when it is base64, else as it came.
    let pem = Zeroizing::new(pem_of(&private_key));
    let loaded = load_private_key(&pem);
    let kept: &str = if loaded.is_ok() { &pem } else { &private_key };
    write_private(&key_path, kept.as_bytes())?;
    let id = created.signing_key_id.as_deref().unwrap_or("(no id given)");
    let key = loaded.map_err(|e| {
        format!(
            "eBay made key {id}, but its privateKey does not load ({e}); it is kept as eBay \
             sent it in {}",
            key_path.display()
        )
    })?;
    let jwe = created
        .jwe
        .as_deref()
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .ok_or_else(|| {
            format!(
                "eBay made key {id} without a jwe; the private key is in {}: fetch the jwe with \
                 GET /developer/key_management/v1/signing_key/{id} and put it in {}",
                key_path.display(),
                jwe_path.display()
            )
        })?
        .to_owned();
    write_private(&jwe_path, jwe.as_bytes())?;
    let mut out = report(&cx, &created, key.algorithm(), &key_path, &jwe_path);
    if !key
        .algorithm()
        .starts_with(&cipher.wire().to_ascii_lowercase())
    {
        out.push_str(&format!(
            "\nNote: {} was asked for, and eBay made a {} key.\n",
            cipher.wire(),
            key.algorithm()
        ));
    }
    Ok(out)
}

/// `name` as a file name part: letters, digits, `.`, `-` and `_` kept, anything else (a `/` in a
/// quoted TOML table name, say) made `_`.
fn file_name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Fails before eBay is asked for a key when the state folder cannot take the files.
fn probe_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".create-key-probe.{}", std::process::id()));
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    let _ = fs::remove_file(&probe);
    created.map(drop).map_err(|e| {
        format!(
            "cannot write into the state folder {} ({e}): fix that first, eBay keeps no copy of \
             the key it makes",
            dir.display()
        )
    })
}

/// The profile's static token as it is, or a fresh application token (client credentials); and
/// whether it is for eBay's Sandbox (by the token endpoint's host, else the profile's hosts).
async fn application_token(cx: &ToolContext<'_>) -> Result<(Secret, bool), String> {
    let sandbox_hosts = cx.hosts.iter().all(|h| h.contains(".sandbox."));
    match cx.token {
        TokenSource::Static(token) => Ok((token.clone(), sandbox_hosts)),
        TokenSource::Managed(endpoint) => {
            let request = endpoint
                .application_grant_request(cx.now)
                .ok_or("the profile's token endpoint grants no application tokens")?
                .map_err(|e| e.to_string())?;
            let sandbox = request
                .uri()
                .host()
                .is_some_and(|h| h.contains(".sandbox."));
            let (status, body) = cx
                .upstream
                .exchange(request, "eBay's token endpoint")
                .await?;
            let grant = endpoint
                .parse_grant(status, &body, cx.now)
                .map_err(|e| format!("no application token for the Key Management API: {e}"))?;
            Ok((grant.access_token, sandbox))
        }
        TokenSource::None => Err(format!(
            "[{}] has no credentials for eBay: add client_id and client_secret (the Key \
             Management API takes an application token)",
            cx.profile
        )),
    }
}

fn key_request(host: &str, token: &Secret, cipher: Cipher) -> Result<Request<Bytes>, String> {
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| "the access token is not valid in a header".to_owned())?;
    authorization.set_sensitive(true);
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://{host}{KEY_PATH}"))
        .header(header::AUTHORIZATION, authorization)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(format!(
            r#"{{"signingKeyCipher":"{}"}}"#,
            cipher.wire()
        )))
        .map_err(|e| format!("cannot build the Key Management request: {e}"))
}

/// eBay's `errors[]` in a refusal, as `errorId message` lines; of anything else, its size.
fn ebay_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(rename = "errorId")]
        error_id: Option<i64>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(errors) if !errors.errors.is_empty() => errors
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.error_id.map(|id| id.to_string()).unwrap_or_default(),
                    e.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join("; "),
        // Not eBay's envelope (a gateway's page, say): not shown, it may echo the request.
        _ if body.is_empty() => "(empty answer)".to_owned(),
        _ => format!(
            "(an answer of {} bytes that is not eBay's JSON)",
            body.len()
        ),
    }
}

/// eBay's bare base64 PKCS#8 DER as PEM, so the file reads like any other key file.
fn pem_of(base64: &str) -> String {
    let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
        base64
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    if compact.starts_with(b"-----BEGIN ") {
        return base64.trim().to_owned() + "\n";
    }
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in compact.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Writes `bytes` to a new file `path` with mode 0600, whole or not at all: a temporary file
/// beside it, then a hard link that fails if `path` exists. Where hard links are not supported,
/// the file is created in place (still never over an existing one).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let create = |at: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(at)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover of an earlier run of this process id that died between create and link.
    let _ = fs::remove_file(&temporary);
    let linked = create(&temporary).and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(format!("{} exists: it is left as it is", path.display()))
        }
        // EPERM or EOPNOTSUPP: a file system without hard links (vfat, some network mounts).
        Err(e) if matches!(e.raw_os_error(), Some(1 | 95)) => create(path).map_err(fail),
        Err(e) => Err(fail(e)),
    }
}

fn report(
    cx: &ToolContext<'_>,
    created: &SigningKey,
    algorithm: &str,
    key_path: &Path,
    jwe_path: &Path,
) -> String {
    let toml_path = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let expires_at = created.expires_at();
    let expiry = match expires_at {
        Some(at) => format!(
            ", valid until {}",
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(at))
        ),
        None => String::new(),
    };
    let mut out = format!(
        "Created eBay signing key {} ({algorithm}){expiry}.\n\
         Wrote the private key to {} and its JWE to {} (mode 0600).\n\
         eBay keeps no copy of the private key: back the file up, or create a new key if it is \
         lost.\n\n\
         Put these lines in [{}], replacing any private_key, jwe and key_expires_at there, then \
         restart signproxy or send it SIGHUP:\n\n\
         private_key = {{ file = {} }}\n\
         jwe = {{ file = {} }}\n",
        created.signing_key_id.as_deref().unwrap_or("(no id given)"),
        key_path.display(),
        jwe_path.display(),
        cx.profile,
        toml_path(key_path),
        toml_path(jwe_path),
    );
    if let Some(at) = expires_at {
        out.push_str(&format!("key_expires_at = {at}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_BARE: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";

    #[test]
    fn bare_base64_becomes_a_pem_that_loads() {
        let pem = pem_of(ED25519_BARE);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        assert_eq!(load_private_key(&pem).unwrap().algorithm(), "ed25519");
        // Line breaks in eBay's value change nothing.
        let broken = format!("{}\n{}", &ED25519_BARE[..30], &ED25519_BARE[30..]);
        assert_eq!(pem_of(&broken), pem);
    }

    #[test]
    fn refusals_show_ebays_error_ids_and_never_quoted_values() {
        let body = br#"{"errors":[{"errorId":1100,"domain":"ACCESS","message":"Access denied"}]}"#;
        assert_eq!(ebay_error(body), "1100 Access denied");
        assert_eq!(ebay_error(b""), "(empty answer)");
        let odd = ebay_error(br#"<html>token "abc123secret" refused</html>"#);
        assert!(!odd.contains("abc123secret"), "{odd}");
    }

    #[test]
    fn files_are_private_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_private(&path, b"one").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write_private(&path, b"two").unwrap_err();
        assert!(err.contains("exists"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn odd_answers_still_give_a_file_name_and_an_expiry_only_when_it_is_one() {
        let answer = |json: &str| serde_json::from_str::<SigningKey>(json).unwrap();
        let plain =
            answer(r#"{"signingKeyId":"a1-B2_c3","jwe":"j","expirationTime":"1891900800"}"#);
        assert_eq!(plain.file_id(), "a1-B2_c3");
        assert_eq!(plain.expires_at(), Some(1_891_900_800));
        let odd =
            answer(r#"{"signingKeyId":"../../etc/x","jwe":"j","expirationTime":1891900800000}"#);
        assert_eq!(odd.file_id().len(), 16);
        assert!(odd.file_id().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            odd.expires_at(),
            None,
            "milliseconds are no Unix time in seconds"
        );
        assert_eq!(answer(r#"{"expirationTime":1.5}"#).expires_at(), None);
    }

    #[test]
    fn the_request_asks_for_the_cipher_with_a_hidden_token() {
        let req = key_request("apiz.ebay.com", &Secret::new("app-token"), Cipher::Rsa).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().to_string(),
            "https://apiz.ebay.com/developer/key_management/v1/signing_key"
        );
        assert_eq!(req.body().as_ref(), br#"{"signingKeyCipher":"RSA"}"#);
        let auth = &req.headers()[header::AUTHORIZATION];
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Bearer app-token");
    }
}
