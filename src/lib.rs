//! signproxy: a local signing forward proxy for marketplace APIs.
//!
//! # Layout
//!
//! - [`admin`]: the operator's port: `/healthz`, `/readyz`, `/metrics`.
//! - [`ca`]: the local CA for HTTPS interception and its per-host leaf certificates.
//! - [`cli`]: the `signproxy` subcommands (`run`, `check`, `sign`, `ca`, `health`); `main.rs` only calls it.
//! - [`logging`]: log output setup (`[log] format` and `level`).
//! - [`metrics`]: the Prometheus metrics the proxy keeps.
//! - [`config`]: the TOML schema, secret references and validation, producing a typed [`config::Config`].
//! - [`secret`]: [`secret::Secret`], a credential that never prints itself.
//! - [`sign`]: pure signers (TikTok Shop HMAC, eBay RFC 9421) and key loading; no sockets, no clock.
//! - [`route`]: host (+ `x-signproxy-profile`) → profile, or passthrough, or refusal.
//! - [`proxy`]: the server: live state and reload, accept loop, limits and shutdown, the canonical log line, absolute-form forwarding, CONNECT, and the
//!   single place where errors become HTTP responses.
//! - [`request`]: client request → upstream head (hop-by-hop hygiene, Host, Content-Length), then signing.
//! - [`token`]: access-token lifecycle: static or managed (refresh, persist, retry on expiry).
//! - [`upstream`]: the pooled rustls client that talks to the marketplaces.
//! - `fuzzing` (hidden): entry points shared by the fuzz targets and the corpus regression test.

pub mod admin;
pub mod ca;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod request;
pub mod route;
pub mod secret;
pub mod sign;
pub mod token;
pub mod upstream;
