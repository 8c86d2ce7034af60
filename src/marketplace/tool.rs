//! The seam for commands a marketplace adds to the command line (`signproxy ebay create-key`):
//! what the CLI hands such a command, so that the CLI itself names no marketplace.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, StatusCode};

use super::TokenSource;
use crate::clock::Timestamp;

/// A boxed future, as a marketplace command returns it.
pub type ToolFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends one request through signproxy's own upstream client (its trust roots, `connect_to` and
/// timeouts) and reads the whole, small answer.
pub trait Exchange: Send + Sync {
    /// `what` names the far end in errors: "eBay's Key Management API".
    fn exchange<'a>(
        &'a self,
        request: Request<Bytes>,
        what: &'a str,
    ) -> ToolFuture<'a, Result<(StatusCode, Bytes), String>>;
}

/// What the CLI gives a marketplace command: the profile named by `--profile`, the state folder
/// and the upstream client.
pub struct ToolContext<'a> {
    /// `ebay.default`: how messages name the profile.
    pub profile: &'a str,
    /// `default`: the name after the dot.
    pub name: &'a str,
    /// The profile's host patterns as written.
    pub hosts: &'a [String],
    pub token: &'a TokenSource,
    /// `[proxy] state_dir`, created 0700.
    pub state_dir: &'a Path,
    pub now: Timestamp,
    pub upstream: &'a dyn Exchange,
}

/// One command of a marketplace: `signproxy <marketplace> <command> --profile NAME ...`.
pub trait Tool: Sync {
    /// The subcommand with its name, help and own arguments. The CLI adds `--config` and
    /// `--profile`.
    fn command(&self) -> clap::Command;
    /// Runs the command; `Ok` is what to print.
    fn run<'a>(
        &'a self,
        args: &'a clap::ArgMatches,
        cx: ToolContext<'a>,
    ) -> ToolFuture<'a, Result<String, String>>;
}
