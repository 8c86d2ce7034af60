//! The TOML config: raw schema (unknown keys are errors), secret references (literal, env, file),
//! and validation into a typed [`Config`] whose errors name the file, the key and the fix.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::clock::Timestamp;
pub use crate::host::{is_ip_literal, HostPattern};
use crate::marketplace::{
    self, ProfileContext, ProfileError, Sign, StandIn, TokenSource, MARKETPLACES,
};
pub use crate::secret::SecretRef;
use crate::secret::{without_quoted_strings, Secret};
use crate::state_dir::exposure_warning;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default `[upstream] max_in_flight`: upstream connections (and their TLS buffers) stay
/// bounded however many clients connect.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_PASSTHROUGH_PORTS: [u16; 1] = [443];
/// The top-level tables besides the marketplaces'.
const SECTIONS: [&str; 8] = [
    "proxy", "upstream", "mitm", "admin", "log", "sandbox", "store", "inbound",
];

/// How errors name a config given as text rather than a file.
const INLINE_SOURCE: &str = "<inline config>";

/// A config problem: where (file, key) and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", file.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

/// The validated configuration. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    pub proxy: ProxySettings,
    pub upstream: UpstreamSettings,
    pub mitm: MitmSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub sandbox: SandboxSettings,
    pub store: StoreSettings,
    pub profiles: Vec<Arc<Profile>>,
    /// `[inbound.NAME]`: listeners that verify marketplace webhooks before the app sees them.
    pub inbound: Vec<InboundSettings>,
    /// Problems that do not stop signproxy but should be fixed (a config file with literal
    /// secrets, or a secret file, that group or others can read). `check` prints them, `run`
    /// logs them.
    pub warnings: Vec<String>,
}

/// The operator's port: health, readiness and metrics. Off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
    /// `[admin] token`: `/readyz` and `/metrics` need `Authorization: Bearer TOKEN` (`/healthz`
    /// stays open for container health checks).
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace` (`SIGNPROXY_LOG` overrides it).
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where the interception CA lives (created there on first run when both files are absent).
#[derive(Debug, Clone)]
pub struct MitmSettings {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Every profile's host patterns: a CA signproxy creates may only vouch for these (X.509
    /// name constraints), and an existing CA must cover them.
    pub permitted_hosts: Vec<HostPattern>,
}

#[derive(Debug)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub passthrough: Vec<HostPattern>,
    /// Where signproxy keeps what it creates (the CA, tokens).
    pub state_dir: PathBuf,
    /// Client connections served at once (a CONNECT tunnel holds its connection's slot).
    pub max_connections: usize,
    /// Event-loop threads serving the proxy port, each with its own listener (SO_REUSEPORT)
    /// and upstream pools; `0` in the file means one per CPU.
    pub workers: usize,
    /// A client must send a complete request head within this (slowloris defence).
    pub header_read_timeout: Duration,
    /// A client connection or tunnel with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// `[proxy.auth]`: who may use the proxy, and which profiles each client may sign with.
    pub auth: Option<ProxyAuth>,
    /// Ranges a passthrough destination may be in although its address class is refused.
    pub allow_networks: Vec<IpNet>,
    /// Ports a passthrough CONNECT may reach (absolute-form may also use 80 and 443).
    pub passthrough_ports: Vec<u16>,
    /// A buffered (signed) request body must arrive within this.
    pub body_read_timeout: Duration,
    /// Request body bytes buffered at once across all requests.
    pub max_buffered_bytes: u64,
    /// The largest request head (request line plus headers) accepted.
    pub max_header_bytes: usize,
}

/// `[proxy.auth]`: every request and CONNECT needs `Proxy-Authorization: Basic` for one client.
#[derive(Debug)]
pub struct ProxyAuth {
    pub clients: Vec<Arc<ProxyClient>>,
}

/// One proxy client: its credentials and the profiles it may sign with.
#[derive(Debug)]
pub struct ProxyClient {
    pub username: String,
    pub password: Secret,
    /// Qualified profile names (`tiktok.eu`) this client may use; `None` (the key left out) means
    /// all, an empty list none (a client for passthrough only).
    pub profiles: Option<Vec<String>>,
}

impl ProxyClient {
    pub fn may_use(&self, profile: &Profile) -> bool {
        match &self.profiles {
            None => true,
            Some(allowed) => allowed.iter().any(|p| *p == profile.qualified_name()),
        }
    }
}

#[derive(Debug)]
pub struct UpstreamSettings {
    pub ca_file: Option<PathBuf>,
    /// Roots trusted besides the built-in web roots (from `ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `host:port` (lower-case) → address to dial instead.
    pub connect_to: BTreeMap<String, String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests in flight to upstreams at once, for the whole process (each holds one upstream
    /// connection until its answer is read); more wait their turn within the request timeout.
    pub max_in_flight: usize,
}

/// `[sandbox]`: the built-in marketplace stand-ins.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Answer every marketplace host (and token endpoint) with the stand-ins instead of the
    /// network (`run --sandbox` sets it too).
    pub enabled: bool,
    /// Lifetime of the access tokens the stand-ins grant.
    pub token_ttl_secs: u64,
    /// Where `sandbox serve` listens unless `--listen` says otherwise.
    pub listen: SocketAddr,
}

/// `[store]`: where managed tokens are kept.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// `tokens.json` in the state folder: one replica.
    File,
    /// A Redis server shared by many replicas.
    Redis(RedisSettings),
}

/// `[store] backend = "redis"`. The URL holds the password: no `Debug` of its value.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: Secret,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(self.url.expose()))
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl PartialEq for RedisSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.key_prefix == other.key_prefix
            && self.connect_timeout == other.connect_timeout
            && self.response_timeout == other.response_timeout
    }
}

/// A Redis URL without its user and password: `rediss://host:6380/0`, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let rest = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{rest}")
}

pub const DEFAULT_STORE_KEY_PREFIX: &str = "signproxy:";
pub const DEFAULT_STORE_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_STORE_RESPONSE_TIMEOUT_MS: u64 = 2_000;

/// The default `[sandbox] token_ttl_secs`: two hours, as eBay grants.
pub const DEFAULT_SANDBOX_TOKEN_TTL_SECS: u64 = 7200;
const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:8443";

/// One credential set and the hosts it signs for.
#[derive(Debug)]
pub struct Profile {
    /// The name after the dot, e.g. `default` in `[tiktok.default]`.
    pub name: String,
    /// The marketplace's config table (`tiktok`, `ebay`, ...) the profile came from.
    pub kind: &'static str,
    pub hosts: Vec<HostPattern>,
    pub signer: Arc<dyn Sign>,
    /// Where the access token comes from: none, a static secret, or managed refreshes.
    pub token: TokenSource,
    /// The marketplace's offline stand-in, holding this profile's credentials to verify with.
    pub stand_in: Arc<dyn StandIn>,
    /// How the profile verifies the marketplace's webhooks, when it sends any.
    pub webhook: Option<Arc<dyn marketplace::webhook::Webhook>>,
    /// `kind.name`, made once: every request's log line and metrics name the profile.
    label: Arc<str>,
}

impl Profile {
    /// `tiktok.default`: how messages and logs name the profile.
    pub fn qualified_name(&self) -> String {
        self.label.to_string()
    }

    /// [`Profile::qualified_name`], shared rather than copied.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn serves(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }

    /// A warning when the profile's signing credential (an eBay key lasts three years) has
    /// expired or expires within [`EXPIRY_WARNING_SECS`] of `now`.
    pub fn expiry_warning(&self, now: Timestamp) -> Option<String> {
        let expiry = self.signer.credential_expiry()?;
        let now = now.secs();
        if expiry.at > now.saturating_add(EXPIRY_WARNING_SECS) {
            return None;
        }
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(expiry.at));
        let state = if expiry.at <= now {
            format!("expired on {date}")
        } else {
            match (expiry.at - now).div_ceil(86_400) {
                1 => format!("expires within a day, on {date}"),
                days => format!("expires in {days} days, on {date}"),
            }
        };
        Some(format!(
            "[{}]: the {} {state}: {}",
            self.label, expiry.what, expiry.renew
        ))
    }
}

/// How long before a signing credential's stated expiry start-up, reloads, `check` and
/// `/readyz` warn about it.
pub const EXPIRY_WARNING_SECS: u64 = 30 * 86_400;

/// The default `[inbound.NAME] dedupe_capacity`: event ids remembered per listener.
pub const DEFAULT_INBOUND_DEDUPE_CAPACITY: usize = 100_000;
/// The largest `dedupe_retention_secs`: far past every retry horizon, and within what Redis
/// takes as an expiry.
pub const MAX_INBOUND_DEDUPE_RETENTION_SECS: u64 = 30 * 86_400;
/// The default `[inbound.NAME] dedupe_retention_secs`: a day, longer than any marketplace's
/// retries (the longest, about 15.5 h).
pub const DEFAULT_INBOUND_DEDUPE_RETENTION_SECS: u64 = 86_400;
/// Webhook bodies are small, and an inbound body is read before its signature can be checked:
/// anyone who reaches the listener can make it buffer this much per connection.
pub const DEFAULT_INBOUND_MAX_BODY_BYTES: u64 = 1 << 20;

/// One `[inbound.NAME]` listener.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub name: String,
    pub listen: SocketAddr,
    /// The app's URL: plain http on loopback, or https.
    pub forward_to: http::Uri,
    pub routes: Vec<InboundRoute>,
    /// How many event ids the replay guard keeps (least recently seen dropped first).
    pub dedupe_capacity: usize,
    /// How long the shared store (`[store] backend = "redis"`) remembers an accepted event id.
    pub dedupe_retention: Duration,
    pub max_body_bytes: u64,
}

/// One `[[inbound.NAME.routes]]` entry.
#[derive(Debug, Clone)]
pub struct InboundRoute {
    pub path: String,
    pub profile: Arc<Profile>,
    pub verifier: Arc<dyn marketplace::webhook::WebhookRoute>,
    /// How long the app may take to answer before signproxy answers 504.
    pub deadline: Duration,
}

// ---------------------------------------------------------------------------------------------
// Raw schema

/// The sections signproxy itself owns. Unknown keys inside them are errors; a top-level table
/// that is neither one of these nor a marketplace's is refused in [`Config::parse`].
#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    mitm: RawMitm,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    inbound: BTreeMap<String, RawInbound>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    url: Option<SecretRef>,
    key_prefix: Option<String>,
    connect_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: String,
    forward_to: String,
    #[serde(default)]
    routes: Vec<toml::Table>,
    dedupe_capacity: Option<usize>,
    dedupe_retention_secs: Option<u64>,
    max_body_bytes: Option<u64>,
    #[serde(default)]
    allow_unauthenticated: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    #[serde(default)]
    enabled: bool,
    token_ttl_secs: Option<u64>,
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<SecretRef>,
    #[serde(default)]
    allow_unauthenticated: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMitm {
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    max_body_bytes: Option<u64>,
    #[serde(default)]
    passthrough: Vec<String>,
    state_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    workers: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    auth: Option<RawAuth>,
    #[serde(default)]
    allow_unauthenticated: bool,
    #[serde(default)]
    allow_networks: Vec<String>,
    passthrough_ports: Option<Vec<u16>>,
    body_read_timeout_ms: Option<u64>,
    max_buffered_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    clients: Vec<RawProxyClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyClient {
    username: String,
    password: SecretRef,
    profiles: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    ca_file: Option<PathBuf>,
    #[serde(default)]
    connect_to: BTreeMap<String, String>,
    connect_timeout_ms: Option<u64>,
    max_in_flight: Option<usize>,
    request_timeout_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Loading and validation

/// Which config file to use: the flag, else `$SIGNPROXY_CONFIG`, else `./signproxy.toml`, else
/// `config/signproxy.toml`.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    if let Some(env) = std::env::var_os("SIGNPROXY_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(env);
    }
    let local = PathBuf::from("signproxy.toml");
    if local.exists() {
        return local;
    }
    PathBuf::from("config/signproxy.toml")
}

impl Config {
    /// Reads and validates the config file; relative paths inside it are relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            message: format!(
                "cannot read the config file ({e}): pass --config PATH or set SIGNPROXY_CONFIG"
            ),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, path)
    }

    /// Validates TOML text; `base_dir` anchors relative paths (`ca_file`, `{ file = ... }`).
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, Path::new(INLINE_SOURCE))
    }

    fn parse(text: &str, base_dir: &Path, source: &Path) -> Result<Config, ConfigError> {
        let err = |key: Option<String>, message: String| ConfigError {
            file: source.to_path_buf(),
            key,
            message,
        };
        // toml's own Display quotes the offending source line, which may hold a literal secret:
        // report the position and the message only.
        let located = |e: toml::de::Error| {
            let at = e.span().map(|span| line_col(text, span.start));
            let message = without_quoted_strings(e.message().trim_end());
            match at {
                Some((line, col)) => err(None, format!("line {line}, column {col}: {message}")),
                None => err(None, message),
            }
        };
        let mut document: toml::Table = toml::from_str(text).map_err(located)?;
        let raw: RawConfig = toml::from_str(text).map_err(located)?;
        for section in SECTIONS {
            document.remove(section);
        }
        if let Some(unknown) = document.keys().find(|k| marketplace::by_id(k).is_none()) {
            let ids: Vec<&str> = MARKETPLACES.iter().map(|m| m.id()).collect();
            return Err(err(
                Some(unknown.clone()),
                format!(
                    "unknown table: expected {}, or a marketplace profile such as [{}.default] ({})",
                    SECTIONS.join(", "),
                    ids.first().copied().unwrap_or("marketplace"),
                    ids.join(", ")
                ),
            ));
        }
        let ctx = Ctx {
            base_dir,
            err: &err,
            literal_secrets: RefCell::default(),
            warnings: RefCell::default(),
        };

        let listen = ctx.address(
            "proxy.listen",
            raw.proxy.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
            DEFAULT_LISTEN,
        )?;
        let max_body_bytes = raw.proxy.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(err(
                Some("proxy.max_body_bytes".into()),
                "must be at least 1".into(),
            ));
        }
        let passthrough = ctx.patterns("proxy.passthrough", &raw.proxy.passthrough)?;
        let max_connections = raw.proxy.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(err(
                Some("proxy.max_connections".into()),
                "must be at least 1".into(),
            ));
        }
        // The connection limit is a semaphore whose bulk acquire (used to drain) takes a u32.
        if u32::try_from(max_connections).is_err() {
            return Err(err(
                Some("proxy.max_connections".into()),
                format!("{max_connections} is too many: use at most {}", u32::MAX),
            ));
        }
        let workers = match raw.proxy.workers.unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n if n > 256 => {
                return Err(err(
                    Some("proxy.workers".into()),
                    format!("{n} is too many: use at most 256 (0: one per CPU)"),
                ))
            }
            n => n,
        };
        let header_read_timeout = ctx.millis(
            "proxy.header_read_timeout_ms",
            raw.proxy.header_read_timeout_ms,
            DEFAULT_HEADER_READ_TIMEOUT_MS,
        )?;
        let idle_timeout = ctx.millis(
            "proxy.idle_timeout_ms",
            raw.proxy.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
        )?;
        let shutdown_grace = Duration::from_millis(
            raw.proxy
                .shutdown_grace_ms
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
        );
        let admin = ctx.admin(&raw.admin)?;
        let log = ctx.log(raw.log)?;
        let token_ttl_secs = raw
            .sandbox
            .token_ttl_secs
            .unwrap_or(DEFAULT_SANDBOX_TOKEN_TTL_SECS);
        if token_ttl_secs == 0 {
            return Err(err(
                Some("sandbox.token_ttl_secs".into()),
                "must be at least 1".into(),
            ));
        }
        let store = ctx.store(&raw.store)?;
        let sandbox = SandboxSettings {
            enabled: raw.sandbox.enabled,
            token_ttl_secs,
            listen: ctx.address(
                "sandbox.listen",
                raw.sandbox
                    .listen
                    .as_deref()
                    .unwrap_or(DEFAULT_SANDBOX_LISTEN),
                DEFAULT_SANDBOX_LISTEN,
            )?,
        };

        let upstream = ctx.upstream(raw.upstream)?;
        let state_dir = match &raw.proxy.state_dir {
            Some(dir) => ctx.path(dir),
            None => default_state_dir().ok_or_else(|| {
                err(
                    Some("proxy.state_dir".into()),
                    "no default state folder (neither SIGNPROXY_STATE_DIR, XDG_STATE_HOME nor HOME is set): set proxy.state_dir".into(),
                )
            })?,
        };
        let mut mitm = match (&raw.mitm.ca_cert, &raw.mitm.ca_key) {
            (Some(cert), Some(key)) => MitmSettings {
                ca_cert: ctx.path(cert),
                ca_key: ctx.path(key),
                permitted_hosts: Vec::new(),
            },
            (None, None) => MitmSettings {
                ca_cert: state_dir.join("ca-cert.pem"),
                ca_key: state_dir.join("ca-key.pem"),
                permitted_hosts: Vec::new(),
            },
            _ => {
                return Err(err(
                    Some("mitm".into()),
                    "set both ca_cert and ca_key, or neither (signproxy then creates them under proxy.state_dir)".into(),
                ))
            }
        };

        let mut profiles = Vec::new();
        for market in MARKETPLACES {
            let Some(tables) = document.remove(market.id()) else {
                continue;
            };
            for (name, table) in ctx.profile_tables(market.id(), tables)? {
                profiles.push(Arc::new(ctx.profile(*market, name, table, text)?));
            }
        }
        mitm.permitted_hosts = intercepted_hosts(&profiles);

        let auth = raw.proxy.auth.map(|a| ctx.auth(a, &profiles)).transpose()?;
        let inbound = raw
            .inbound
            .into_iter()
            .map(|(name, section)| ctx.inbound(name, section, &profiles, max_body_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let warnings = ctx.take_warnings(source);
        ctx.exposure(
            "proxy.listen",
            listen,
            auth.is_some() || raw.proxy.allow_unauthenticated,
            "add [[proxy.auth.clients]] (username, password, profiles) so clients must authenticate, \
             listen on 127.0.0.1, or set [proxy] allow_unauthenticated = true if every client that \
             can reach this address may sign with every profile",
        )?;
        if let Some(admin_listen) = admin.listen {
            ctx.exposure(
                "admin.listen",
                admin_listen,
                admin.token.is_some() || raw.admin.allow_unauthenticated,
                "set [admin] token = { env = \"VAR\" } so /readyz and /metrics need \
                 `Authorization: Bearer TOKEN`, listen on 127.0.0.1, or set [admin] \
                 allow_unauthenticated = true",
            )?;
        }
        let allow_networks = raw
            .proxy
            .allow_networks
            .iter()
            .map(|text| {
                text.trim().parse::<IpNet>().or_else(|_| text.trim().parse::<std::net::IpAddr>().map(IpNet::from)).map(|n| n.trunc()).map_err(|_| {
                    ctx.fail(
                        "proxy.allow_networks",
                        format!("`{text}` is not a network: use CIDR notation such as \"10.1.2.0/24\" or \"fd00::/64\""),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let passthrough_ports = raw
            .proxy
            .passthrough_ports
            .unwrap_or_else(|| DEFAULT_PASSTHROUGH_PORTS.to_vec());
        if passthrough_ports.contains(&0) {
            return Err(ctx.fail("proxy.passthrough_ports", "port 0 is not a port"));
        }
        let body_read_timeout = ctx.millis(
            "proxy.body_read_timeout_ms",
            raw.proxy.body_read_timeout_ms,
            DEFAULT_BODY_READ_TIMEOUT_MS,
        )?;
        let max_buffered_bytes = raw
            .proxy
            .max_buffered_bytes
            .unwrap_or(DEFAULT_MAX_BUFFERED_BYTES.max(max_body_bytes));
        if max_buffered_bytes < max_body_bytes {
            return Err(ctx.fail(
                "proxy.max_buffered_bytes",
                format!("{max_buffered_bytes} is below [proxy] max_body_bytes ({max_body_bytes}): a request of the largest allowed size could never be buffered; raise it or lower max_body_bytes"),
            ));
        }
        let max_header_bytes = raw
            .proxy
            .max_header_bytes
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if max_header_bytes < 1024 {
            return Err(ctx.fail(
                "proxy.max_header_bytes",
                format!("{max_header_bytes} is too small for any real request head: use at least 1024 (default {DEFAULT_MAX_HEADER_BYTES})"),
            ));
        }

        Ok(Config {
            source: source.to_path_buf(),
            proxy: ProxySettings {
                listen,
                max_body_bytes,
                passthrough,
                state_dir,
                max_connections,
                workers,
                header_read_timeout,
                idle_timeout,
                shutdown_grace,
                auth,
                allow_networks,
                passthrough_ports,
                body_read_timeout,
                max_buffered_bytes,
                max_header_bytes,
            },
            upstream,
            mitm,
            admin,
            log,
            sandbox,
            store,
            profiles,
            inbound,
            warnings,
        })
    }
}

/// Only the `[admin]` table of the config at `path` (its listen address and token), without
/// loading the other secrets: what `signproxy health` needs inside a container.
pub fn admin_settings(path: &Path) -> Result<AdminSettings, ConfigError> {
    #[derive(Deserialize)]
    struct AdminOnly {
        #[serde(default)]
        admin: RawAdmin,
    }
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        key: Some("admin".into()),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read the config file ({e})")))?;
    // The message only: toml's Display quotes the source line, which may hold a secret.
    let raw: AdminOnly =
        toml::from_str(&text).map_err(|e| fail(without_quoted_strings(e.message())))?;
    let ctx = Ctx {
        base_dir: path.parent().unwrap_or(Path::new(".")),
        err: &|key, message| ConfigError {
            file: path.to_path_buf(),
            key,
            message,
        },
        literal_secrets: RefCell::default(),
        warnings: RefCell::default(),
    };
    ctx.admin(&raw.admin)
}

/// `$SIGNPROXY_STATE_DIR`, else `$XDG_STATE_HOME/signproxy`, else `~/.local/state/signproxy`.
pub fn default_state_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("SIGNPROXY_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("signproxy")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/signproxy")))
}

/// Every host pattern some profile serves, once each: what interception may need a certificate for.
fn intercepted_hosts(profiles: &[Arc<Profile>]) -> Vec<HostPattern> {
    let mut hosts: Vec<HostPattern> = Vec::new();
    for pattern in profiles.iter().flat_map(|p| &p.hosts) {
        if !hosts.contains(pattern) {
            hosts.push(pattern.clone());
        }
    }
    hosts
}

struct Ctx<'a> {
    base_dir: &'a Path,
    err: &'a dyn Fn(Option<String>, String) -> ConfigError,
    /// Keys whose secret is written in the config file itself.
    literal_secrets: RefCell<Vec<String>>,
    /// Found while reading secrets (a secret file others can read).
    warnings: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    /// The warnings gathered so far, plus one for the config file itself when it holds literal
    /// secrets that group or others can read.
    fn take_warnings(&self, source: &Path) -> Vec<String> {
        let literals = self.literal_secrets.take();
        let mut warnings = Vec::new();
        if !literals.is_empty() && source != Path::new(INLINE_SOURCE) {
            let holds = format!("literal secrets ({})", literals.join(", "));
            warnings.extend(exposure_warning(source, &holds));
        }
        for warning in self.warnings.take() {
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
        warnings
    }

    fn fail(&self, key: &str, message: impl Into<String>) -> ConfigError {
        (self.err)(Some(key.to_owned()), message.into())
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A positive duration in milliseconds, or the default.
    fn millis(&self, key: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.fail(key, format!("must be at least 1 (default {default})"))),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    fn store(&self, raw: &RawStore) -> Result<StoreSettings, ConfigError> {
        let redis_only = [
            ("store.url", raw.url.is_some()),
            ("store.key_prefix", raw.key_prefix.is_some()),
            ("store.connect_timeout_ms", raw.connect_timeout_ms.is_some()),
            (
                "store.response_timeout_ms",
                raw.response_timeout_ms.is_some(),
            ),
        ];
        match raw.backend.as_deref().unwrap_or("file") {
            "file" => match redis_only.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(self.fail(
                    key,
                    "only applies to backend = \"redis\": remove it, or set [store] backend = \"redis\"",
                )),
                None => Ok(StoreSettings::File),
            },
            "redis" => {
                let url = match &raw.url {
                    Some(r) => self.secret("store.url", r)?,
                    None => {
                        return Err(self.fail(
                            "store.url",
                            "backend = \"redis\" needs url, e.g. { env = \"SIGNPROXY_REDIS_URL\" } holding rediss://user:password@host:6380/0",
                        ))
                    }
                };
                let text = url.expose();
                if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
                    return Err(self.fail(
                        "store.url",
                        format!(
                            "must start with redis:// or rediss:// (TLS); got {}",
                            redacted_url(text)
                        ),
                    ));
                }
                if let Err(e) = redis::Client::open(text) {
                    return Err(self.fail(
                        "store.url",
                        format!(
                            "is not a valid Redis URL ({:?}): {}",
                            e.kind(),
                            redacted_url(text)
                        ),
                    ));
                }
                let key_prefix = raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_STORE_KEY_PREFIX.to_owned());
                if key_prefix.is_empty() {
                    return Err(self.fail(
                        "store.key_prefix",
                        format!("must not be empty (default {DEFAULT_STORE_KEY_PREFIX:?}): it keeps signproxy's keys apart, and ACLs can grant exactly them"),
                    ));
                }
                Ok(StoreSettings::Redis(RedisSettings {
                    url,
                    key_prefix,
                    connect_timeout: self.millis(
                        "store.connect_timeout_ms",
                        raw.connect_timeout_ms,
                        DEFAULT_STORE_CONNECT_TIMEOUT_MS,
                    )?,
                    response_timeout: self.millis(
                        "store.response_timeout_ms",
                        raw.response_timeout_ms,
                        DEFAULT_STORE_RESPONSE_TIMEOUT_MS,
                    )?,
                }))
            }
            other => Err(self.fail(
                "store.backend",
                format!("unknown backend {other:?}: use \"file\" (the default) or \"redis\""),
            )),
        }
    }

    fn admin(&self, raw: &RawAdmin) -> Result<AdminSettings, ConfigError> {
        let listen = match raw.listen.as_deref() {
            None | Some("") => None,
            Some(text) => Some(self.address("admin.listen", text, "127.0.0.1:9090")?),
        };
        let token = raw
            .token
            .as_ref()
            .map(|t| self.secret("admin.token", t))
            .transpose()?;
        Ok(AdminSettings { listen, token })
    }

    /// A listener other machines can reach must authenticate its clients, unless the operator
    /// says in so many words that everyone who can reach it may use it.
    fn exposure(
        &self,
        key: &str,
        addr: SocketAddr,
        authenticated: bool,
        fixes: &str,
    ) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() || authenticated {
            return Ok(());
        }
        Err(self.fail(
            key,
            format!("`{addr}` is reachable from other machines and nothing authenticates its clients: {fixes}"),
        ))
    }

    /// One `[inbound.NAME]` table: its listener (the proxy port's loopback rule: the marketplace
    /// signature is what authenticates, so a public address needs `allow_unauthenticated`
    /// spelled out), the app's URL, and each route through its profile's marketplace.
    fn inbound(
        &self,
        name: String,
        raw: RawInbound,
        profiles: &[Arc<Profile>],
        max_body_bytes: u64,
    ) -> Result<InboundSettings, ConfigError> {
        let at = |k: &str| format!("inbound.{name}.{k}");
        let listen = self.address(&at("listen"), &raw.listen, "127.0.0.1:8081")?;
        self.exposure(
            &at("listen"),
            listen,
            raw.allow_unauthenticated,
            "listen on 127.0.0.1 behind your ingress, or set allow_unauthenticated = true in this \
             table if only marketplace signatures should guard it (every request is verified \
             before it is forwarded)",
        )?;
        let forward_to: http::Uri = raw.forward_to.trim().parse().map_err(|_| {
            self.fail(
                &at("forward_to"),
                "is not a URL: use the app's address, such as \"http://127.0.0.1:3000/\"",
            )
        })?;
        let loopback_host = forward_to.host().is_some_and(|h| {
            h == "localhost"
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match forward_to.scheme_str() {
            Some("https") => {}
            Some("http") if loopback_host => {}
            _ => {
                return Err(self.fail(
                    &at("forward_to"),
                    "must be plain http on loopback (http://127.0.0.1:PORT/) or https: verified events carry order data",
                ))
            }
        }
        if raw.routes.is_empty() {
            return Err(self.fail(
                &at("routes"),
                "lists no route: add [[inbound.NAME.routes]] with path and profile",
            ));
        }
        let mut routes: Vec<InboundRoute> = Vec::new();
        for (i, mut table) in raw.routes.into_iter().enumerate() {
            let rkey = |k: &str| format!("inbound.{name}.routes[{i}].{k}");
            let text = |table: &mut toml::Table, k: &str| -> Result<String, ConfigError> {
                match table.remove(k) {
                    Some(toml::Value::String(s)) => Ok(s),
                    Some(_) => Err(self.fail(&rkey(k), "must be a string")),
                    None => Err(self.fail(&rkey(k), "is missing")),
                }
            };
            let path = text(&mut table, "path")?;
            if !path.starts_with('/') || path.contains('?') {
                return Err(self.fail(
                    &rkey("path"),
                    "must be a path such as \"/webhooks/orders\" (no query)",
                ));
            }
            if routes.iter().any(|r| r.path == path) {
                return Err(self.fail(&rkey("path"), "is already another route's path"));
            }
            let wanted = text(&mut table, "profile")?;
            let qualified =
                qualify_profile(&wanted, profiles).map_err(|m| self.fail(&rkey("profile"), m))?;
            let Some(profile) = profiles
                .iter()
                .find(|p| p.qualified_name() == qualified)
                .cloned()
            else {
                return Err(self.fail(&rkey("profile"), format!("no profile `{wanted}`")));
            };
            let deadline_ms = match table.remove("deadline_ms") {
                None => None,
                Some(toml::Value::Integer(n)) if n > 0 => u64::try_from(n).ok(),
                Some(_) => {
                    return Err(self.fail(&rkey("deadline_ms"), "must be a positive integer"))
                }
            };
            let Some(webhook) = profile.webhook.clone() else {
                return Err(self.fail(
                    &rkey("profile"),
                    format!(
                        "`{qualified}` is a {} profile, and signproxy verifies no webhooks of that marketplace",
                        profile.kind
                    ),
                ));
            };
            let resolve = |key: &str, source: &SecretRef| {
                self.secret(&rkey(key), source)
                    .map_err(|e| ProfileError::new(key, e.message))
            };
            let cx = ProfileContext::new(&profile.name, &resolve);
            let verifier = webhook.route(table, &cx).map_err(|e| {
                let key = if e.key.is_empty() {
                    format!("inbound.{name}.routes[{i}]")
                } else {
                    rkey(&e.key)
                };
                self.fail(&key, e.message)
            })?;
            let deadline = deadline_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| verifier.default_deadline());
            routes.push(InboundRoute {
                path,
                profile,
                verifier,
                deadline,
            });
        }
        let dedupe_capacity = raw
            .dedupe_capacity
            .unwrap_or(DEFAULT_INBOUND_DEDUPE_CAPACITY);
        if dedupe_capacity == 0 {
            return Err(self.fail(&at("dedupe_capacity"), "must be at least 1"));
        }
        let dedupe_retention_secs = raw
            .dedupe_retention_secs
            .unwrap_or(DEFAULT_INBOUND_DEDUPE_RETENTION_SECS);
        if dedupe_retention_secs == 0 {
            return Err(self.fail(&at("dedupe_retention_secs"), "must be at least 1"));
        }
        if dedupe_retention_secs > MAX_INBOUND_DEDUPE_RETENTION_SECS {
            return Err(self.fail(
                &at("dedupe_retention_secs"),
                "must be at most 2592000 (30 days): no marketplace retries for longer",
            ));
        }
        Ok(InboundSettings {
            name,
            listen,
            forward_to,
            routes,
            dedupe_capacity,
            dedupe_retention: Duration::from_secs(dedupe_retention_secs),
            max_body_bytes: raw
                .max_body_bytes
                .unwrap_or(DEFAULT_INBOUND_MAX_BODY_BYTES.min(max_body_bytes))
                .max(1),
        })
    }

    fn auth(&self, raw: RawAuth, profiles: &[Arc<Profile>]) -> Result<ProxyAuth, ConfigError> {
        if raw.clients.is_empty() {
            return Err(self.fail(
                "proxy.auth.clients",
                "lists no client: add [[proxy.auth.clients]] with username and password, or remove [proxy.auth]",
            ));
        }
        let mut clients: Vec<Arc<ProxyClient>> = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            let at = |k: &str| format!("proxy.auth.clients[{i}].{k}");
            // RFC 7617: the user-id cannot contain a colon.
            if c.username.is_empty() || c.username.contains(':') {
                return Err(self.fail(&at("username"), "must be non-empty and contain no `:`"));
            }
            if clients.iter().any(|other| other.username == c.username) {
                return Err(self.fail(&at("username"), format!("`{}` is listed twice", c.username)));
            }
            let password = self.secret(&at("password"), &c.password)?;
            let allowed = c
                .profiles
                .map(|names| {
                    names
                        .iter()
                        .map(|name| {
                            qualify_profile(name, profiles)
                                .map_err(|m| self.fail(&at("profiles"), m))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            clients.push(Arc::new(ProxyClient {
                username: c.username,
                password,
                profiles: allowed,
            }));
        }
        Ok(ProxyAuth { clients })
    }

    fn address(&self, key: &str, text: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.fail(
                key,
                format!("`{text}` is not an address: use IP:PORT, e.g. \"{example}\""),
            )
        })
    }

    fn log(&self, raw: RawLog) -> Result<LogSettings, ConfigError> {
        let format = match raw.format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(self.fail(
                    "log.format",
                    format!("`{other}` is not a log format: use \"pretty\" or \"json\""),
                ))
            }
        };
        let level = raw.level.as_deref().unwrap_or("info").to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(self.fail(
                "log.level",
                format!("`{level}` is not a level: use error, warn, info, debug or trace"),
            ));
        }
        Ok(LogSettings { format, level })
    }

    fn patterns(&self, key: &str, items: &[String]) -> Result<Vec<HostPattern>, ConfigError> {
        items
            .iter()
            .map(|h| HostPattern::parse(h).map_err(|m| self.fail(key, m)))
            .collect()
    }

    fn secret(&self, key: &str, r: &SecretRef) -> Result<Secret, ConfigError> {
        let value = match r {
            SecretRef::Literal(s) => {
                self.literal_secrets.borrow_mut().push(key.to_owned());
                s.clone()
            }
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) => Secret::new(v),
                Err(_) => {
                    return Err(self.fail(
                        key,
                        format!("environment variable {var} is not set (or not UTF-8): export it, or use a literal or {{ file = \"PATH\" }}"),
                    ))
                }
            },
            SecretRef::File(p) => {
                let full = self.path(p);
                match std::fs::read_to_string(&full) {
                    // Secret files (Docker secrets, `echo > file`) usually end in a newline that
                    // is not part of the secret.
                    Ok(v) => {
                        let holds = format!("the secret {key}");
                        self.warnings
                            .borrow_mut()
                            .extend(exposure_warning(&full, &holds));
                        Secret::new(v.trim_end_matches(['\r', '\n']))
                    }
                    Err(e) => {
                        return Err(self.fail(
                            key,
                            format!("cannot read secret file {} ({e})", full.display()),
                        ))
                    }
                }
            }
        };
        if value.expose().trim().is_empty() {
            return Err(self.fail(key, "the secret is empty"));
        }
        Ok(value)
    }

    fn upstream(&self, raw: RawUpstream) -> Result<UpstreamSettings, ConfigError> {
        let mut extra_roots = Vec::new();
        let ca_file = raw.ca_file.as_deref().map(|p| self.path(p));
        if let Some(path) = &ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    self.fail(
                        "upstream.ca_file",
                        format!("cannot read PEM certificates from {} ({e})", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(self.fail(
                    "upstream.ca_file",
                    format!("{} holds no `BEGIN CERTIFICATE` block", path.display()),
                ));
            }
            extra_roots = certs;
        }
        let mut connect_to = BTreeMap::new();
        for (from, to) in raw.connect_to {
            let key = format!("upstream.connect_to.\"{from}\"");
            if !has_port(&from) || !has_port(&to) {
                return Err(self.fail(
                    &key,
                    format!("`{from}` = `{to}`: both sides need HOST:PORT, e.g. \"api.example.com:443\" = \"127.0.0.1:9443\""),
                ));
            }
            connect_to.insert(from.to_ascii_lowercase(), to);
        }
        Ok(UpstreamSettings {
            ca_file,
            extra_roots,
            connect_to,
            connect_timeout: self.millis(
                "upstream.connect_timeout_ms",
                raw.connect_timeout_ms,
                10_000,
            )?,
            request_timeout: self.millis(
                "upstream.request_timeout_ms",
                raw.request_timeout_ms,
                60_000,
            )?,
            max_in_flight: match raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT) {
                0 => return Err(self.fail("upstream.max_in_flight", "must be at least 1")),
                n => n,
            },
        })
    }

    /// The `[ID.NAME]` tables under a marketplace's key. A value that is not a table (`[ebay]`
    /// with keys directly under it) is refused without showing it: it may be a secret.
    fn profile_tables(
        &self,
        id: &str,
        tables: toml::Value,
    ) -> Result<Vec<(String, toml::Table)>, ConfigError> {
        let toml::Value::Table(tables) = tables else {
            return Err(self.fail(
                id,
                format!("must hold profile tables: write [{id}.default] (the name after the dot is free)"),
            ));
        };
        tables
            .into_iter()
            .map(|(name, table)| match table {
                toml::Value::Table(table) => Ok((name, table)),
                _ => Err(self.fail(
                    &format!("{id}.{name}"),
                    format!("is not a profile table: put the profile's keys under [{id}.NAME], e.g. [{id}.default]"),
                )),
            })
            .collect()
    }

    /// Builds one profile through its marketplace; errors name `ID.NAME.KEY` and, where it can be
    /// found in `text`, the line.
    fn profile(
        &self,
        market: &'static dyn marketplace::Marketplace,
        name: String,
        table: toml::Table,
        text: &str,
    ) -> Result<Profile, ConfigError> {
        let id = market.id();
        let resolve = |key: &str, source: &SecretRef| {
            self.secret(&format!("{id}.{name}.{key}"), source)
                .map_err(|e| ProfileError::new(key, e.message))
        };
        let warn = |message: String| {
            self.warnings
                .borrow_mut()
                .push(format!("{id}.{name}: {message}"))
        };
        let cx = ProfileContext::new(&name, &resolve).with_warnings(&warn);
        let located = |e: ProfileError| {
            let key = match e.key.as_str() {
                "" => format!("{id}.{name}"),
                key => format!("{id}.{name}.{key}"),
            };
            // A nested key (`app_secret.env`) is found by its first part.
            let first = e.key.split('.').next().unwrap_or("");
            let message = match locate_key(text, &format!("{id}.{name}"), first) {
                Some(line) => format!("line {line}: {}", e.message),
                None => e.message,
            };
            self.fail(&key, message)
        };
        let parts = market.profile(table, &cx).map_err(located)?;
        let hosts_key = format!("{id}.{name}.hosts");
        if parts.hosts.is_empty() {
            return Err(self.fail(
                &hosts_key,
                "lists no host: a profile must serve at least one",
            ));
        }
        Ok(Profile {
            hosts: self.patterns(&hosts_key, &parts.hosts)?,
            label: format!("{id}.{name}").into(),
            name,
            kind: id,
            signer: parts.signer,
            token: parts.token,
            stand_in: parts.stand_in,
            webhook: parts.webhook,
        })
    }
}

/// `eu` or `tiktok.eu` → `tiktok.eu`, if exactly one profile has that name.
fn qualify_profile(name: &str, profiles: &[Arc<Profile>]) -> Result<String, String> {
    let matching: Vec<String> = profiles
        .iter()
        .filter(|p| p.name == name || p.qualified_name() == name)
        .map(|p| p.qualified_name())
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no profile `{name}`: name one of {}",
            profiles
                .iter()
                .map(|p| p.qualified_name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        many => Err(format!(
            "`{name}` could be any of {}: use the qualified name",
            many.join(", ")
        )),
    }
}

/// The line of `key` inside the table `[section]` of `text` (the header's line for an empty key),
/// when written in the usual way. Marketplace tables are handed over as values, without the
/// positions the TOML parser knew, so errors find their line again here.
fn locate_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let header = line.trim_start_matches('[').split(']').next().unwrap_or("");
            let header: String = header.chars().filter(|c| !c.is_whitespace()).collect();
            inside = header == section;
            if inside && key.is_empty() {
                return Some(i + 1);
            }
            continue;
        }
        let named = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if inside && !key.is_empty() && named {
            return Some(i + 1);
        }
    }
    None
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

fn has_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("."))
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.proxy.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.proxy.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.profiles.is_empty());
    }

    #[test]
    fn inbound_listeners_follow_the_proxy_port_rules() {
        let profile = "[tiktok.default]\napp_key=\"k\"\napp_secret=\"s\"\n[shopee.default]\npartner_id=1\npartner_key=\"shpk\"\n";
        let inbound = |listen: &str, forward: &str, route: &str| {
            format!("{profile}[inbound.hooks]\nlisten=\"{listen}\"\nforward_to=\"{forward}\"\n[[inbound.hooks.routes]]\n{route}\n")
        };
        let tt = "path=\"/hooks/tt\"\nprofile=\"tiktok.default\"";
        let c = parse(&inbound("127.0.0.1:8081", "http://127.0.0.1:3000/", tt)).unwrap();
        assert_eq!(c.inbound.len(), 1);
        assert_eq!(
            c.inbound[0].routes[0].profile.qualified_name(),
            "tiktok.default"
        );
        assert_eq!(c.inbound[0].routes[0].deadline, Duration::from_millis(2500));
        assert_eq!(
            c.inbound[0].dedupe_capacity,
            DEFAULT_INBOUND_DEDUPE_CAPACITY
        );
        assert_eq!(
            c.inbound[0].dedupe_retention,
            Duration::from_secs(DEFAULT_INBOUND_DEDUPE_RETENTION_SECS)
        );
        let retention = |secs: &str| {
            parse(
                &inbound("127.0.0.1:8081", "http://127.0.0.1:3000/", tt).replace(
                    "[[inbound.hooks.routes]]",
                    &format!("dedupe_retention_secs = {secs}\n[[inbound.hooks.routes]]"),
                ),
            )
        };
        assert_eq!(
            retention("60").unwrap().inbound[0].dedupe_retention,
            Duration::from_secs(60)
        );
        for wrong in ["0", "2592001", "10000000000000000"] {
            let e = retention(wrong).unwrap_err();
            assert!(
                e.to_string()
                    .contains("inbound.hooks.dedupe_retention_secs"),
                "{e}"
            );
        }
        assert!(retention("2592000").is_ok());
        // A public address needs the explicit opt-in.
        let e = parse(&inbound("0.0.0.0:8081", "http://127.0.0.1:3000/", tt)).unwrap_err();
        assert!(e.to_string().contains("inbound.hooks.listen"), "{e}");
        // Plain http only on loopback.
        let e = parse(&inbound("127.0.0.1:8081", "http://app.internal:3000/", tt)).unwrap_err();
        assert!(e.to_string().contains("inbound.hooks.forward_to"), "{e}");
        parse(&inbound("127.0.0.1:8081", "https://app.internal/", tt)).unwrap();
        // Route keys are the marketplace's: unknown ones and missing ones are errors.
        let e = parse(&inbound(
            "127.0.0.1:8081",
            "http://127.0.0.1:3000/",
            "path=\"/hooks/tt\"\nprofile=\"tiktok.default\"\ncallback_url=\"https://x\"",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("inbound.hooks.routes[0]"), "{e}");
        let e = parse(&inbound(
            "127.0.0.1:8081",
            "http://127.0.0.1:3000/",
            "path=\"/hooks/sp\"\nprofile=\"shopee.default\"",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("callback_url"), "{e}");
        let e = parse(&inbound(
            "127.0.0.1:8081",
            "http://127.0.0.1:3000/",
            "path=\"/hooks/tt\"\nprofile=\"nope\"",
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("inbound.hooks.routes[0].profile"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:1\"\nmax_body = 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `max_body`"), "{e}");
        let e =
            parse("[tiktok.a]\napp_key=\"k\"\napp_secret=\"s\"\nappsecret=\"x\"\n").unwrap_err();
        assert!(e.to_string().contains("appsecret"), "{e}");
    }

    #[test]
    fn secrets_from_literal_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "from-file\n").unwrap();
        std::env::set_var("SIGNPROXY_TEST_SECRET_A", "from-env");
        let text = r#"
            [tiktok.lit]
            app_key = "k"
            app_secret = "literal"
            [tiktok.env]
            app_key = "k"
            app_secret = { env = "SIGNPROXY_TEST_SECRET_A" }
            [tiktok.file]
            app_key = "k"
            app_secret = { file = "s.txt" }
        "#;
        let c = Config::from_toml_str(text, dir.path()).unwrap();
        // Which secret a profile holds shows in its signature: the HMAC of `/x`, app_key and
        // timestamp under the expected secret, computed here with the hmac crate directly.
        let signature = |n: &str| {
            let profile = c.profiles.iter().find(|p| p.name == n).unwrap();
            let head = crate::signing::RequestHead {
                method: http::Method::GET,
                authority: "open-api.tiktokglobalshop.com".into(),
                path_and_query: "/x".into(),
                headers: http::HeaderMap::new(),
            };
            let input = crate::marketplace::SignInput {
                head: &head,
                body: b"",
                access_token: None,
                now: crate::clock::Timestamp::from_secs(1),
            };
            let signed = profile.signer.sign(input).unwrap();
            signed
                .path_and_query
                .rsplit("sign=")
                .next()
                .unwrap()
                .to_owned()
        };
        let expected = |secret: &str| {
            use hmac::{Hmac, Mac};
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{secret}/xapp_keyktimestamp1{secret}").as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(signature("lit"), expected("literal"));
        assert_eq!(signature("env"), expected("from-env"));
        assert_eq!(signature("file"), expected("from-file"));
    }

    #[test]
    fn missing_env_names_key_and_variable() {
        let e = parse(
            "[tiktok.default]\napp_key=\"k\"\napp_secret={ env = \"SIGNPROXY_NOPE_UNSET\" }\n",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("tiktok.default.app_secret"), "{m}");
        assert!(m.contains("SIGNPROXY_NOPE_UNSET"), "{m}");
    }

    #[test]
    fn bad_secret_table_is_explained() {
        let e = parse("[tiktok.d]\napp_key=\"k\"\napp_secret={ vault = \"x\" }\n").unwrap_err();
        assert!(
            e.to_string().contains("unknown secret source `vault`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_give_a_position_but_never_quote_the_line() {
        let e = parse("[tiktok.d]\napp_key=\"k\"\napp_secret=\"topsecret-abc\" trailing\n")
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("line 3"), "{m}");
        assert!(!m.contains("topsecret-abc"), "{m}");
    }

    #[test]
    fn token_sources_are_exclusive_and_complete() {
        let e = parse("[tiktok.d]\napp_key=\"k\"\napp_secret=\"s\"\naccess_token=\"a\"\nrefresh_token=\"r\"\n").unwrap_err();
        assert!(
            e.to_string().contains("tiktok.d.refresh_token") && e.to_string().contains("not both"),
            "{e}"
        );
        let key = "\"\"\"\n-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n\"\"\"";
        let ebay = |extra: &str| format!("[ebay.e]\nprivate_key = {key}\njwe = \"j\"\n{extra}");
        let e = parse(&ebay("client_id = \"id\"\n")).unwrap_err();
        assert!(e.to_string().contains("ebay.e.client_secret"), "{e}");
        let e = parse(&ebay("refresh_token = \"r\"\n")).unwrap_err();
        assert!(e.to_string().contains("need client_id"), "{e}");
        let ok = parse(&ebay(
            "client_id = \"id\"\nclient_secret = \"cs\"\nhosts = [\"api.sandbox.ebay.com\"]\n",
        ))
        .unwrap();
        // The endpoint is the marketplace's business; what config shows of it is its seed,
        // which names the token URL (sandbox for sandbox-only profiles).
        match &ok.profiles[0].token {
            TokenSource::Managed(endpoint) => {
                assert_eq!(endpoint.describe(), "managed application access tokens");
                assert!(format!("{endpoint:?}").contains("api.sandbox.ebay.com/identity"));
            }
            other => panic!("{other:?}"),
        }
        let prod = parse(&ebay("client_id = \"id\"\nclient_secret = \"cs\"\n")).unwrap();
        assert!(
            matches!(&prod.profiles[0].token, TokenSource::Managed(e) if format!("{e:?}").contains("\"https://api.ebay.com/identity/v1/oauth2/token\""))
        );
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.EXAMPLE.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        // Non-ASCII hosts never reach here from the proxy (URIs are ASCII), but must not panic.
        assert!(!HostPattern::parse("*.ab").unwrap().matches("aéa"));
        assert!(HostPattern::parse("*.ab").unwrap().matches("é.ab"));
        assert!(HostPattern::parse("https://x.com").is_err());
        // Patterns name hosts, never addresses: these would match IP literals.
        assert!(HostPattern::parse("::1").is_err() && HostPattern::parse("[::1]").is_err());
        for address in ["127.0.0.1", "*.0.1", "*.1", "0x7f.1", "2130706433"] {
            let e = HostPattern::parse(address).unwrap_err();
            assert!(e.contains("allow_networks"), "{address}: {e}");
        }
        assert!(!p.matches("127.0.0.1"));
        assert_eq!(p.matches("a.example.com."), p.matches("a.example.com"));
        assert!(!HostPattern::parse("*.example.com")
            .unwrap()
            .matches("[::1]"));
        assert!(HostPattern::parse("x.com:443").is_err());
    }

    #[test]
    fn connect_to_needs_ports() {
        let e =
            parse("[upstream]\nconnect_to = { \"api.ebay.com\" = \"127.0.0.1:1\" }\n").unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }

    /// A secret of every TOML type that is not a string (or a string in a misplaced spot): the
    /// error names the line and the accepted forms, never the value.
    #[test]
    fn a_mistyped_secret_is_refused_by_type_without_its_value() {
        let cases = [
            ("86753091234", "an integer"),
            ("-86753091234", "an integer"),
            ("0x7fab1e5ec", "an integer"),
            ("8675309.1234", "a float"),
            ("true", "a boolean"),
            ("1979-05-27T07:32:00.8675309Z", "a date-time"),
            ("1979-05-27", "a date-time"),
            ("07:32:00.8675309", "a date-time"),
            ("[\"array-secret-867\"]", "an array"),
            ("[8675309]", "an array"),
            ("{ env = 86753091234 }", "an integer"),
            ("{ file = 8675309.1234 }", "a float"),
            ("{ env = true }", "a boolean"),
            ("{ file = 1979-05-27T07:32:00.8675309Z }", "a date-time"),
            ("{ env = [\"array-secret-867\"] }", "an array"),
            ("{ file = { inner = \"table-secret-867\" } }", "a table"),
        ];
        for (value, found) in cases {
            let text = format!("[tiktok.d]\napp_key = \"k\"\napp_secret = {value}\n");
            let e = parse(&text).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(shown.contains("line 3"), "{value}: {shown}");
            assert!(
                shown.contains(
                    r#"a secret: "literal" in quotes, { env = "VAR" } or { file = "PATH" }"#
                ),
                "{value}: {shown}"
            );
            assert!(
                shown.contains(&format!("found {found}")),
                "{value}: {shown}"
            );
            for leak in [
                "8675309",
                "array-secret",
                "table-secret",
                "1979",
                "0x7fab1e5ec",
            ] {
                assert!(!shown.contains(leak), "{value} leaks {leak:?}: {shown}");
            }
        }
    }

    #[test]
    fn an_unknown_secret_source_is_named_but_its_value_is_not_read() {
        for value in ["\"vault-secret-867\"", "86753091234"] {
            let text = format!("[tiktok.d]\napp_key=\"k\"\napp_secret={{ vault = {value} }}\n");
            let shown = parse(&text).unwrap_err().to_string();
            assert!(shown.contains("unknown secret source `vault`"), "{shown}");
            assert!(
                !shown.contains("vault-secret") && !shown.contains("8675309"),
                "{shown}"
            );
        }
    }

    #[test]
    fn every_secret_key_refuses_by_type() {
        let key = "\"\"\"\n-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n\"\"\"";
        let cases = [
            "[tiktok.d]\napp_key=\"k\"\napp_secret=\"s\"\naccess_token = 86753091234\n".to_owned(),
            "[tiktok.d]\napp_key=\"k\"\napp_secret=\"s\"\nrefresh_token = 86753091234\n".to_owned(),
            "[ebay.e]\nprivate_key = 86753091234\njwe = \"j\"\n".to_owned(),
            format!("[ebay.e]\nprivate_key = {key}\njwe = 86753091234\n"),
            format!("[ebay.e]\nprivate_key = {key}\njwe = \"j\"\nclient_id = \"c\"\nclient_secret = 86753091234\n"),
        ];
        for text in cases {
            let shown = parse(&text).unwrap_err().to_string();
            assert!(shown.contains("found an integer"), "{shown}");
            assert!(!shown.contains("8675309"), "{shown}");
        }
    }

    #[cfg(unix)]
    fn write_with_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_config_file_with_literal_secrets_that_others_can_read_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signproxy.toml");
        let literal = "[tiktok.d]\napp_key = \"k\"\napp_secret = \"literal-secret-867\"\n";
        write_with_mode(&path, literal, 0o644);
        let warnings = Config::load(&path).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("chmod 600 {}", path.display()))
                && warnings[0].contains("tiktok.d.app_secret"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("literal-secret-867"));
        write_with_mode(&path, literal, 0o600);
        assert!(Config::load(&path).unwrap().warnings.is_empty());

        std::env::set_var("SIGNPROXY_TEST_SECRET_PERM", "from-env");
        let by_env =
            "[tiktok.d]\napp_key = \"k\"\napp_secret = { env = \"SIGNPROXY_TEST_SECRET_PERM\" }\n";
        write_with_mode(&path, by_env, 0o644);
        assert!(
            Config::load(&path).unwrap().warnings.is_empty(),
            "no secret in the file, nothing to protect"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_that_others_can_read_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("app_secret.txt");
        write_with_mode(&secret, "file-secret-867\n", 0o644);
        let text = "[tiktok.d]\napp_key = \"k\"\napp_secret = { file = \"app_secret.txt\" }\n";
        let warnings = Config::from_toml_str(text, dir.path()).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("chmod 600 {}", secret.display()))
                && warnings[0].contains("tiktok.d.app_secret"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("file-secret-867"));
        write_with_mode(&secret, "file-secret-867\n", 0o600);
        assert!(Config::from_toml_str(text, dir.path())
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn the_ca_may_vouch_for_every_profile_host_once() {
        let c = parse(
            "[tiktok.a]\napp_key=\"k\"\napp_secret=\"s\"\nhosts=[\"x.example.com\", \"*.shop.example\"]\n\
             [tiktok.b]\napp_key=\"k\"\napp_secret=\"s\"\nhosts=[\"X.example.com\"]\n\
             [proxy]\npassthrough=[\"*.amazonaws.com\"]\n",
        )
        .unwrap();
        let hosts: Vec<String> = c
            .mitm
            .permitted_hosts
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(hosts, ["x.example.com", "*.shop.example"]);
    }

    #[test]
    fn store_defaults_to_the_file_and_redis_needs_a_redis_url() {
        assert!(matches!(parse("").unwrap().store, StoreSettings::File));
        let redis = parse(
            "[store]\nbackend = \"redis\"\nurl = \"rediss://u:hunter2@redis.internal:6380/1\"\n",
        )
        .unwrap();
        let StoreSettings::Redis(settings) = &redis.store else {
            panic!("not redis");
        };
        assert_eq!(settings.key_prefix, DEFAULT_STORE_KEY_PREFIX);
        assert_eq!(settings.connect_timeout, Duration::from_millis(2000));
        let shown = format!("{:?}", redis.store);
        assert!(shown.contains("rediss://redis.internal:6380/1"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        for (text, key, says) in [
            ("[store]\nbackend = \"redis\"\n", "store.url", "needs url"),
            (
                "[store]\nbackend = \"memcached\"\n",
                "store.backend",
                "unknown backend",
            ),
            (
                "[store]\nkey_prefix = \"x:\"\n",
                "store.key_prefix",
                "only applies",
            ),
            (
                "[store]\nbackend = \"redis\"\nurl = \"http://u:hunter2@h/\"\n",
                "store.url",
                "redis:// or rediss://",
            ),
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis://h\"\nkey_prefix = \"\"\n",
                "store.key_prefix",
                "must not be empty",
            ),
            (
                "[store]\nbackend = \"redis\"\nurl = \"redis://h\"\nconnect_timeout_ms = 0\n",
                "store.connect_timeout_ms",
                "at least 1",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.message.contains(says), "{text}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn redis_urls_are_shown_without_credentials() {
        assert_eq!(redacted_url("redis://:pw@h:1/0"), "redis://h:1/0");
        assert_eq!(redacted_url("rediss://u:p@ss@h/2?x=pw"), "rediss://h/2");
        assert_eq!(redacted_url("redis://h"), "redis://h");
    }

    #[test]
    fn config_error_never_contains_the_secret() {
        let e = parse("[tiktok.d]\napp_key=\"\"\napp_secret=\"supersecret-xyz\"\n").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("supersecret-xyz"));
        // A profile table left out: each key becomes a profile and each value a mistyped one.
        let e = parse("[tiktok]\napp_secret=\"supersecret-xyz\"\napp_key=\"k\"\n").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("supersecret-xyz"), "{e}");
        assert!(
            e.to_string()
                .contains(": is not a profile table: put the profile's keys under [tiktok.NAME]"),
            "{e}"
        );
        assert_eq!(
            without_quoted_strings(r#"a string "x\"y" b string "z"#),
            "a string b string"
        );
        let ok = parse("[tiktok.d]\napp_key=\"k\"\napp_secret=\"supersecret-xyz\"\n").unwrap();
        assert!(!format!("{ok:?}").contains("supersecret-xyz"));
    }
}
