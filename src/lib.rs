//! signproxy: a local signing forward proxy for marketplace APIs.
//!
//! # Layout
//!
//! - [`ca`]: the local CA for HTTPS interception and its per-host leaf certificates.
//! - [`cli`]: the `signproxy` subcommands (`run`, `check`, `sign`); `main.rs` only calls it.
//! - [`config`]: the TOML schema, secret references and validation, producing a typed [`config::Config`].
//! - [`secret`]: [`secret::Secret`], a credential that never prints itself.
//! - [`sign`]: pure signers (TikTok Shop HMAC, eBay RFC 9421) and key loading; no sockets, no clock.
//! - [`route`]: host (+ `x-signproxy-profile`) → profile, or passthrough, or refusal.
//! - [`proxy`]: the server: accept loop and shutdown, absolute-form forwarding, CONNECT, and the
//!   single place where errors become HTTP responses.
//! - [`request`]: client request → upstream head (hop-by-hop hygiene, Host, Content-Length), then signing.
//! - [`token`]: access-token lifecycle: static or managed (refresh, persist, retry on expiry).
//! - [`upstream`]: the pooled rustls client that talks to the marketplaces.

pub mod ca;
pub mod cli;
pub mod config;
pub mod proxy;
pub mod request;
pub mod route;
pub mod secret;
pub mod sign;
pub mod token;
pub mod upstream;
