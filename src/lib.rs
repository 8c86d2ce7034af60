//! signproxy: a local signing forward proxy for marketplace APIs.
//!
//! # Layout
//!
//! From the bottom up; each layer uses only the ones above it in this list (no cycles).
//!
//! - [`clock`]: time as it is passed in: the [`clock::Clock`] trait and [`clock::Timestamp`] (ms).
//! - [`secret`]: [`secret::Secret`], a credential that never prints itself, and
//!   [`secret::SecretRef`], where the config says one comes from.
//! - [`host`]: host patterns (`api.example.com`, `*.example.com`; never an address).
//! - [`signing`]: the primitives every signer shares: [`signing::RequestHead`], [`signing::SignError`].
//! - [`marketplace`]: the seam: the `Marketplace`, `Sign` and `TokenEndpoint` traits and
//!   `MARKETPLACES`, the one list; one folder per marketplace (`tiktok/`, `ebay/`) with its
//!   config table, pure signer, OAuth, doctor checks and sandbox stand-in (with what stand-ins
//!   share in `marketplace::stand_in`). Nothing outside a folder names its marketplace.
//! - [`egress`]: the SSRF guard for non-profile destinations: address classes,
//!   `[proxy] allow_networks`, resolve once and dial only checked addresses.
//! - [`state_dir`]: files holding secrets: the state folder created 0700, and warnings (with the
//!   `chmod` fix) for secret files that group or others can read.
//! - [`config`]: the TOML file → a typed [`config::Config`]; marketplace tables become profiles
//!   through the registry; errors name the file, the key and the fix.
//! - [`route`]: host + port (+ `x-signproxy-profile`, + proxy client) → profile, passthrough or
//!   refusal.
//! - [`request`]: client request → upstream head (hop-by-hop hygiene, Host, Content-Length).
//! - [`ca`]: the local CA for HTTPS interception and its per-host leaf certificates.
//! - [`sandbox`]: the profiles' stand-ins answering marketplace hosts offline (`run --sandbox`,
//!   and `sandbox serve` as an HTTPS server of its own).
//! - [`upstream`]: the pooled rustls clients (marketplace, and passthrough behind the guard), or
//!   the sandbox in their place.
//! - [`token`]: access-token lifecycle over a `TokenEndpoint`: static or managed (refresh,
//!   persist, retry on expiry).
//! - [`metrics`]: the Prometheus metrics the proxy keeps.
//! - [`inbound`]: `[inbound.NAME]` listeners: marketplace webhooks verified through the profile's
//!   `marketplace::webhook::WebhookRoute`, de-duplicated, forwarded to the app (keys fetched by id
//!   through the proxy's upstream client and token manager).
//! - [`proxy`]: the server: live state and reload, admission (auth, head limits), accept loop,
//!   one event loop per worker thread, limits and shutdown, the canonical log line,
//!   absolute-form forwarding, CONNECT, and the single place where errors become HTTP responses.
//! - [`doctor`]: `signproxy doctor`: a raw request someone's code signed → the marketplace's
//!   diagnosis (right, or which mistake).
//! - [`admin`]: the operator's port: `/healthz`, `/readyz`, `/metrics`.
//! - [`logging`]: log output setup (`[log] format` and `level`).
//! - `fuzzing` (hidden): entry points shared by the fuzz targets and the corpus regression test.
//! - [`cli`]: the `signproxy` subcommands (`run`, `check`, `sign`, `doctor`, `sandbox`, `ca`,
//!   `health`); `main.rs`
//!   only calls it.

pub(crate) mod admin;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod doctor;
pub(crate) mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod host;
pub mod inbound;
pub(crate) mod logging;
pub mod marketplace;
pub mod metrics;
pub mod proxy;
pub mod request;
pub(crate) mod route;
pub mod sandbox;
pub mod secret;
pub mod signing;
pub(crate) mod state_dir;
pub mod token;
pub(crate) mod upstream;
