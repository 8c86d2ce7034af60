//! The seam between the [`super::TokenManager`] and where tokens are kept: [`Store`], with the
//! file store (one replica) and the Redis store (many replicas) behind it. A store loads a
//! profile's pair with its version, writes a new pair only if the version is still the one that
//! was refreshed (compare-and-swap), hands out a per-profile refresh lease, and forgets an access
//! token the marketplace called expired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::store::{StoreError, StoredProfile, TokenStore};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A profile's stored pair and its version (0: nothing stored yet).
pub struct Versioned {
    pub version: u64,
    pub profile: Option<StoredProfile>,
}

/// The right to refresh one profile until it is released or its time runs out.
pub struct Lease {
    pub profile: String,
    /// Random, so that a release only ever deletes this holder's lease.
    pub id: String,
    /// When it was asked for: it ends its time-to-live after this, at the latest.
    pub taken_at: std::time::Instant,
}

pub trait Store: Send + Sync {
    /// Names the store in errors and logs, without credentials.
    fn describe(&self) -> String;
    /// Whether other processes share it: then its state is read before use, refreshes take its
    /// lease, and writes are compare-and-swap.
    fn shared(&self) -> bool;
    fn load<'a>(&'a self, profile: &'a str) -> StoreFuture<'a, Versioned>;
    /// Writes `entry` if the stored version is still `expected`; the new version, or `None`
    /// when another writer came first (nothing written).
    fn put<'a>(
        &'a self,
        profile: &'a str,
        expected: u64,
        entry: StoredProfile,
    ) -> StoreFuture<'a, Option<u64>>;
    /// The profile's refresh lease for at most `ttl`, or `None` while another holder has it.
    fn acquire<'a>(&'a self, profile: &'a str, ttl: Duration) -> StoreFuture<'a, Option<Lease>>;
    /// Gives the lease back (only if it is still this holder's).
    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()>;
    /// Drops the stored access token if it is still `access_token` (the marketplace said it
    /// expired), keeping the refresh token and the version.
    fn invalidate<'a>(&'a self, profile: &'a str, access_token: &'a str) -> StoreFuture<'a, ()>;
}

/// The file store: one process, so its lease is the token manager's own per-profile lock and
/// every write succeeds.
pub struct FileBackend(pub Arc<TokenStore>);

impl Store for FileBackend {
    fn describe(&self) -> String {
        self.0.path().display().to_string()
    }

    fn shared(&self) -> bool {
        false
    }

    fn load<'a>(&'a self, profile: &'a str) -> StoreFuture<'a, Versioned> {
        let profile = self.0.get(profile);
        Box::pin(async move {
            Ok(Versioned {
                version: 0,
                profile,
            })
        })
    }

    fn put<'a>(
        &'a self,
        profile: &'a str,
        _expected: u64,
        entry: StoredProfile,
    ) -> StoreFuture<'a, Option<u64>> {
        let written = self.0.put(profile, entry).map(|()| Some(0));
        Box::pin(async move { written })
    }

    fn acquire<'a>(&'a self, profile: &'a str, _ttl: Duration) -> StoreFuture<'a, Option<Lease>> {
        let lease = Lease {
            profile: profile.to_owned(),
            id: String::new(),
            taken_at: std::time::Instant::now(),
        };
        Box::pin(async move { Ok(Some(lease)) })
    }

    fn release<'a>(&'a self, _lease: &'a Lease) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn invalidate<'a>(&'a self, _profile: &'a str, _access_token: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}
