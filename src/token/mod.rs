//! Access-token lifecycle: where a profile's token comes from (none, static, or managed), and the
//! [`TokenManager`] that obtains managed tokens, refreshes them ahead of expiry (one refresh at a
//! time per profile, a cooldown after failures), persists them before use, and never hands out a
//! token past its expiry.

pub mod backend;
pub mod redis_replay;
pub mod redis_store;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::config::{Config, Profile, StoreSettings};
pub use crate::marketplace::TokenSource;
use crate::marketplace::{RestrictedResource, TokenEndpoint};
use crate::metrics::{Metrics, Outcome};
use crate::secret::Secret;
use crate::upstream::Upstream;
use backend::{FileBackend, Store, Versioned};
use redis_store::RedisStore;
use store::{StoreError, StoredProfile, TokenStore};

/// Up to this much extra, at random, so that many proxies do not refresh in the same second.
const REFRESH_JITTER_SECS: u64 = 60;
/// After a failed refresh, wait this long before the next attempt, doubling up to the maximum.
const COOLDOWN_FIRST_MS: u64 = 1_000;
const COOLDOWN_MAX_MS: u64 = 60_000;
/// Warn at every refresh once the refresh token has less than this left.
const REFRESH_EXPIRY_WARNING_SECS: u64 = 14 * 86400;
/// Token endpoint answers are small; anything bigger is not a grant.
const MAX_GRANT_BYTES: usize = 1 << 20;
/// Restricted tokens kept per profile (one per operation and resource path: each order id is
/// its own); past it, the expired ones go, and if that is not enough, all that are idle.
const RESTRICTED_CACHE_MAX: usize = 10_000;
/// A restricted resource named by more than this (path and data elements) is not minted for:
/// no real operation comes close, and each cache key is kept in memory.
const RESTRICTED_KEY_MAX: usize = 2048;
/// After a failed mint, the same resource is refused this long without asking again: a missing
/// role fails every time, and each mint counts against the marketplace's rate limit.
const RESTRICTED_COOLDOWN_MS: u64 = 10_000;
/// Failed mints remembered at once (past this the memory starts afresh).
const RESTRICTED_FAILURES_MAX: usize = 1024;
/// With a shared store, a cached token is checked against the store at most this often (another
/// replica may have been told it expired).
const SHARED_SYNC_MS: u64 = 1_000;
/// The longest a request with a fresh cached token waits for that check.
const SYNC_BUDGET: Duration = Duration::from_millis(250);
/// While another replica holds the refresh lease, look for its new token this often.
const LEASE_POLL_MS: u64 = 50;
/// A refresh stops waiting for the token endpoint this long before its lease runs out.
const LEASE_MARGIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("no valid access token for profile {profile}: {reason}")]
    Unavailable { profile: String, reason: String },
    #[error(transparent)]
    Store(Arc<store::StoreError>),
}

#[derive(Clone)]
struct Access {
    token: Secret,
    expires_at: u64,
    /// When to start refreshing (before `expires_at`, with jitter).
    refresh_at: u64,
}

#[derive(Default)]
struct EntryState {
    access: Option<Access>,
    /// The current refresh token: the config's, or a newer rotated one.
    refresh_token: Option<Secret>,
    refresh_expires_at: Option<u64>,
    failures: u32,
    /// No refresh before this (the clock's time): the backoff after failures.
    cooldown_until: Option<Timestamp>,
    last_error: Option<String>,
    /// The store's version of the pair held (shared stores; 0: nothing stored).
    version: u64,
}

struct Entry {
    name: String,
    source: TokenSource,
    endpoint: Arc<dyn TokenEndpoint>,
    seed: String,
    state: Mutex<EntryState>,
    /// Serializes refreshes: concurrent requests wait for the one in flight.
    refreshing: tokio::sync::Mutex<()>,
    /// Restricted tokens by API host and [`RestrictedResource::cache_key`], in memory only (they
    /// live an hour). Each slot's lock makes one mint per key at a time.
    restricted: Mutex<HashMap<String, RestrictedSlot>>,
    /// Resources whose last mint failed: until when they are refused, and why.
    restricted_failures: Mutex<HashMap<String, (Timestamp, String)>>,
    /// With a shared store: when (clock millis) the cached token is next checked against it.
    next_sync_ms: AtomicU64,
    /// The last refresh's pair could not be written to a shared store: its lease is left to run
    /// out rather than released, so no other replica refreshes at once with the spent token.
    unpersisted: std::sync::atomic::AtomicBool,
}

type RestrictedSlot = Arc<tokio::sync::Mutex<Option<Access>>>;

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid_access(&self, now: Timestamp) -> Option<Access> {
        self.lock()
            .access
            .clone()
            .filter(|a| now.secs() < a.expires_at)
    }

    fn fresh_access(&self, now: Timestamp) -> Option<Access> {
        self.lock()
            .access
            .clone()
            .filter(|a| now.secs() < a.refresh_at)
    }

    /// The cache slot for a restricted token, made on first use.
    fn restricted_slot(&self, key: &str, now: Timestamp) -> RestrictedSlot {
        let mut slots = self.restricted.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(key) {
            make_room(&mut slots, RESTRICTED_CACHE_MAX, now);
        }
        Arc::clone(slots.entry(key.to_owned()).or_default())
    }

    /// Drops `key`'s slot if it holds no token and nobody is using it: a failed mint leaves no
    /// entry behind (clients choose the paths, so empty slots would pile up).
    fn forget_empty_slot(&self, key: &str) {
        let mut slots = self.restricted.lock().unwrap_or_else(|p| p.into_inner());
        let empty = slots
            .get(key)
            .is_some_and(|slot| slot.try_lock().is_ok_and(|held| held.is_none()));
        if empty {
            slots.remove(key);
        }
    }

    /// Why `key`'s last mint failed, while its cooldown lasts.
    fn recent_failure(&self, key: &str, now: Timestamp) -> Option<String> {
        let failures = self
            .restricted_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failures
            .get(key)
            .filter(|(until, _)| now.millis() < until.millis())
            .map(|(_, reason)| reason.clone())
    }

    fn note_failure(&self, key: &str, now: Timestamp, reason: String) {
        let mut failures = self
            .restricted_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failures.len() >= RESTRICTED_FAILURES_MAX {
            failures.clear();
        }
        let until = Timestamp::from_millis(now.millis().saturating_add(RESTRICTED_COOLDOWN_MS));
        failures.insert(key.to_owned(), (until, reason));
    }

    fn clear_failure(&self, key: &str) {
        self.restricted_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Where the tokens are kept, and what identifies that place across reloads.
#[derive(Clone)]
enum Held {
    File(Arc<TokenStore>),
    Redis(Arc<RedisStore>),
}

impl Held {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Held::File(file) => Arc::new(FileBackend(Arc::clone(file))),
            Held::Redis(redis) => Arc::clone(redis) as Arc<dyn Store>,
        }
    }

    fn serves(&self, config: &Config) -> bool {
        match (self, &config.store) {
            (Held::File(file), StoreSettings::File) => {
                file.path() == TokenStore::path_in(&config.proxy.state_dir)
            }
            (Held::Redis(redis), StoreSettings::Redis(settings)) => redis.settings() == settings,
            _ => false,
        }
    }
}

/// Opens the store `config` names (a Redis store connects on first use).
fn open_store(config: &Config) -> Result<(Held, Option<String>), StoreError> {
    match &config.store {
        StoreSettings::File => {
            let (store, warning) = TokenStore::open(&config.proxy.state_dir)?;
            Ok((Held::File(Arc::new(store)), warning))
        }
        StoreSettings::Redis(settings) => {
            Ok((Held::Redis(Arc::new(RedisStore::new(settings)?)), None))
        }
    }
}

/// Owns every managed profile's tokens.
pub struct TokenManager {
    entries: HashMap<String, Arc<Entry>>,
    held: Option<Held>,
    store: Option<Arc<dyn Store>>,
    /// The longest a refresh may hold the shared store's lease: the token endpoint's timeout.
    lease_ttl: Duration,
    upstream: Upstream,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("profiles", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// The shared Redis store this manager holds, so other users of Redis share its connection.
    pub fn shared_redis(&self) -> Option<Arc<RedisStore>> {
        match &self.held {
            Some(Held::Redis(redis)) => Some(Arc::clone(redis)),
            _ => None,
        }
    }

    /// Sets up managed profiles, resuming from the state folder's token file. On a reload,
    /// `previous` hands over the token file and every profile whose token source is unchanged,
    /// so tokens (and a refresh in flight) carry on. Returns warnings to log (a corrupt file
    /// set aside).
    pub fn new(
        config: &Config,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        previous: Option<&TokenManager>,
        now: Timestamp,
    ) -> Result<(TokenManager, Vec<String>), TokenError> {
        // A profile that refuses every request until it is completed (an eBay profile without
        // its key) gets no token: nothing is asked of the marketplace for it, and readiness
        // leaves it out.
        let managed: Vec<&Arc<Profile>> = config
            .profiles
            .iter()
            .filter(|p| p.token.is_managed() && p.signer.can_sign())
            .collect();
        let mut warnings = Vec::new();
        let reusable_store = previous
            .and_then(|p| p.held.as_ref())
            .filter(|held| held.serves(config))
            .cloned();
        let held = match reusable_store {
            // The sandbox's tokens live in memory only: they must never replace (rotate away)
            // the marketplace's refresh tokens in the state folder (or the shared store).
            _ if managed.is_empty() || config.sandbox.enabled => None,
            Some(shared) => Some(shared),
            None => {
                let (held, warning) =
                    open_store(config).map_err(|e| TokenError::Store(Arc::new(e)))?;
                warnings.extend(warning);
                Some(held)
            }
        };
        // Only the file is read here: a shared store is read before each use.
        let file = match &held {
            Some(Held::File(file)) => Some(Arc::clone(file)),
            _ => None,
        };
        let store = held.as_ref().map(Held::store);
        let now = now.secs();
        let mut entries = HashMap::new();
        for profile in managed {
            let TokenSource::Managed(endpoint) = &profile.token else {
                continue;
            };
            let name = profile.qualified_name();
            let carried = previous
                .and_then(|p| p.entries.get(&name))
                .filter(|e| e.source.same_as(&profile.token));
            if let Some(entry) = carried {
                entries.insert(name, Arc::clone(entry));
                continue;
            }
            let seed = endpoint.seed();
            let mut state = EntryState {
                refresh_token: endpoint.initial_refresh_token().cloned(),
                ..EntryState::default()
            };
            // Stored state wins only if it descends from the configured credential.
            if let Some(stored) = file
                .as_ref()
                .and_then(|s| s.get(&name))
                .filter(|s| s.seed == seed)
            {
                if let Some(rt) = stored.refresh_token.clone() {
                    state.refresh_token = Some(Secret::new(rt));
                    state.refresh_expires_at = stored.refresh_expires_at;
                }
                if let (Some(token), Some(expires_at)) =
                    (stored.access_token.clone(), stored.expires_at)
                {
                    if now < expires_at {
                        let obtained = stored.obtained_at.unwrap_or(now);
                        state.access = Some(Access {
                            token: Secret::new(token),
                            expires_at,
                            refresh_at: refresh_at(
                                obtained,
                                expires_at,
                                endpoint.refresh_margin_secs(),
                            ),
                        });
                    }
                }
            }
            entries.insert(
                name.clone(),
                Arc::new(Entry {
                    name,
                    source: profile.token.clone(),
                    endpoint: Arc::clone(endpoint),
                    seed,
                    state: Mutex::new(state),
                    refreshing: tokio::sync::Mutex::new(()),
                    restricted: Mutex::new(HashMap::new()),
                    restricted_failures: Mutex::new(HashMap::new()),
                    next_sync_ms: AtomicU64::new(0),
                    unpersisted: std::sync::atomic::AtomicBool::new(false),
                }),
            );
        }
        Ok((
            TokenManager {
                entries,
                held,
                store,
                lease_ttl: config.upstream.connect_timeout + config.upstream.request_timeout,
                upstream,
                metrics,
            },
            warnings,
        ))
    }

    /// The token to inject for `profile` as of `now`, or `None` when the profile has none.
    pub async fn token(
        &self,
        profile: &Profile,
        now: Timestamp,
    ) -> Result<Option<Secret>, TokenError> {
        let entry = match &profile.token {
            TokenSource::None => return Ok(None),
            TokenSource::Static(token) => return Ok(Some(token.clone())),
            TokenSource::Managed(_) => self.entry(profile)?,
        };
        if let Some(access) = entry.fresh_access(now) {
            if !self.sync_due(&entry, now) {
                return Ok(Some(access.token));
            }
            // A slow store costs a request at most this much: the cached token is still good.
            let _ = tokio::time::timeout(SYNC_BUDGET, self.sync(&entry, now)).await;
            if let Some(access) = entry.fresh_access(now) {
                return Ok(Some(access.token));
            }
        }
        let _refreshing = match entry.refreshing.try_lock() {
            Ok(guard) => guard,
            // A refresh ahead of expiry is under way: no need to wait while the token still works.
            Err(_) => match entry.valid_access(now) {
                Some(access) => return Ok(Some(access.token)),
                None => entry.refreshing.lock().await,
            },
        };
        if let Some(access) = entry.fresh_access(now) {
            return Ok(Some(access.token));
        }
        self.refresh_locked(&entry, now, None).await.map(Some)
    }

    /// After the marketplace answered "token expired" for `rejected`: one refresh (unless another
    /// request already replaced that token) and the new token.
    pub async fn refresh_after_rejection(
        &self,
        profile: &Profile,
        rejected: &Secret,
        now: Timestamp,
    ) -> Result<Secret, TokenError> {
        let entry = self.entry(profile)?;
        let _refreshing = entry.refreshing.lock().await;
        {
            let mut state = entry.lock();
            match &state.access {
                Some(a) if a.token != *rejected && now.secs() < a.expires_at => {
                    return Ok(a.token.clone())
                }
                // The marketplace says this token is dead, whatever its stated expiry.
                Some(a) if a.token == *rejected => state.access = None,
                _ => {}
            }
        }
        // For every replica: the next one to look finds no access token in the store.
        if let Some(store) = self.store.as_ref().filter(|s| s.shared()) {
            if let Err(e) = store.invalidate(&entry.name, rejected.expose()).await {
                self.metrics.token_store_error("invalidate");
                tracing::warn!(profile = %entry.name, error = %e, "could not invalidate the expired access token in the shared store");
            }
        }
        self.refresh_locked(&entry, now, Some(rejected)).await
    }

    /// The restricted token for `resource` on the API host `authority` (see
    /// [`crate::marketplace::TokenNeed::Restricted`]): a cached one with more than the refresh
    /// margin left, else a new one minted with the profile's access token (one mint per
    /// resource at a time). Never the access token instead: a failed mint is an error.
    pub async fn restricted_token(
        &self,
        profile: &Profile,
        authority: &str,
        resource: &RestrictedResource,
        now: Timestamp,
    ) -> Result<Secret, TokenError> {
        let entry = self.entry(profile)?;
        let key = self.restricted_key_checked(&entry, authority, resource)?;
        let slot = entry.restricted_slot(&key, now);
        let mut held = slot.lock().await;
        if let Some(access) = held.as_ref().filter(|a| now.secs() < a.refresh_at) {
            return Ok(access.token.clone());
        }
        let minted = self
            .mint_once(&entry, profile, authority, resource, &key, now)
            .await;
        match minted {
            Ok(access) => {
                *held = Some(access.clone());
                Ok(access.token)
            }
            Err(e) => {
                drop(held);
                entry.forget_empty_slot(&key);
                Err(e)
            }
        }
    }

    /// The cache key of `resource` on `authority`, refused when unreasonably long.
    fn restricted_key_checked(
        &self,
        entry: &Entry,
        authority: &str,
        resource: &RestrictedResource,
    ) -> Result<String, TokenError> {
        let key = restricted_key(authority, resource);
        if key.len() > RESTRICTED_KEY_MAX {
            return Err(TokenError::Unavailable {
                profile: entry.name.clone(),
                reason: format!(
                    "no restricted token for {} {}...: the path and data elements exceed {RESTRICTED_KEY_MAX} bytes",
                    resource.method,
                    resource.path.chars().take(64).collect::<String>()
                ),
            });
        }
        Ok(key)
    }

    /// [`TokenManager::mint`] unless the same resource failed within the cooldown, remembering
    /// a failure for the next requests.
    async fn mint_once(
        &self,
        entry: &Entry,
        profile: &Profile,
        authority: &str,
        resource: &RestrictedResource,
        key: &str,
        now: Timestamp,
    ) -> Result<Access, TokenError> {
        if let Some(reason) = entry.recent_failure(key, now) {
            return Err(TokenError::Unavailable {
                profile: entry.name.clone(),
                reason: format!(
                    "{reason} (the last mint failed; not asked again for {} s)",
                    RESTRICTED_COOLDOWN_MS / 1000
                ),
            });
        }
        match self.mint(entry, profile, authority, resource, now).await {
            Ok(access) => {
                entry.clear_failure(key);
                Ok(access)
            }
            Err(e) => {
                if let TokenError::Unavailable { reason, .. } = &e {
                    entry.note_failure(key, now, reason.clone());
                }
                Err(e)
            }
        }
    }

    /// After the marketplace answered "token expired" for the restricted token `rejected`: a new
    /// one (unless another request already replaced it).
    pub async fn restricted_after_rejection(
        &self,
        profile: &Profile,
        authority: &str,
        resource: &RestrictedResource,
        rejected: &Secret,
        now: Timestamp,
    ) -> Result<Secret, TokenError> {
        let entry = self.entry(profile)?;
        let key = self.restricted_key_checked(&entry, authority, resource)?;
        let slot = entry.restricted_slot(&key, now);
        let mut held = slot.lock().await;
        if let Some(access) = held
            .as_ref()
            .filter(|a| a.token != *rejected && now.secs() < a.expires_at)
        {
            return Ok(access.token.clone());
        }
        *held = None;
        match self
            .mint_once(&entry, profile, authority, resource, &key, now)
            .await
        {
            Ok(access) => {
                *held = Some(access.clone());
                Ok(access.token)
            }
            Err(e) => {
                drop(held);
                entry.forget_empty_slot(&key);
                Err(e)
            }
        }
    }

    /// One mint of a restricted token, with the profile's access token; if the marketplace
    /// says that token expired, one refresh and one more try.
    async fn mint(
        &self,
        entry: &Entry,
        profile: &Profile,
        authority: &str,
        resource: &RestrictedResource,
        now: Timestamp,
    ) -> Result<Access, TokenError> {
        let operation = format!("{} {}", resource.method, resource.path);
        let unavailable = |reason: String| TokenError::Unavailable {
            profile: entry.name.clone(),
            reason: format!("no restricted token for {operation}: {reason}"),
        };
        let mut access_token = self.token(profile, now).await?.ok_or_else(|| {
            unavailable("the profile has no access token to mint one with".to_owned())
        })?;
        let mut retried = false;
        loop {
            let request = entry
                .endpoint
                .restricted_request(authority, resource, &access_token)
                .map_err(|e| unavailable(e.to_string()))?;
            let (status, body) = self
                .exchange(request, "the restricted token endpoint")
                .await
                .map_err(unavailable)?;
            if !retried && entry.endpoint.is_expired_answer(status, &body) {
                retried = true;
                access_token = self
                    .refresh_after_rejection(profile, &access_token, now)
                    .await?;
                continue;
            }
            let grant = match entry.endpoint.parse_restricted(status, &body, now) {
                Ok(grant) => grant,
                Err(e) => {
                    tracing::warn!(profile = %entry.name, operation = %operation, error = %e, "minting a restricted token failed");
                    return Err(unavailable(e.to_string()));
                }
            };
            let now = now.secs();
            if grant.expires_at <= now {
                return Err(unavailable(format!(
                    "the marketplace granted a token that expired already (at {}, now {now}): check the machine's clock",
                    grant.expires_at
                )));
            }
            // No jitter: one proxy's mints are already spread over its requests.
            let lifetime = grant.expires_at - now;
            let margin = entry.endpoint.refresh_margin_secs().min(lifetime / 2);
            tracing::info!(profile = %entry.name, operation = %operation, expires_in_s = lifetime, "restricted token minted");
            return Ok(Access {
                token: grant.access_token,
                expires_at: grant.expires_at,
                refresh_at: grant.expires_at - margin,
            });
        }
    }

    /// Sends a token request (never logged: it carries credentials) and reads the small answer.
    async fn exchange(
        &self,
        request: http::Request<Bytes>,
        what: &str,
    ) -> Result<(http::StatusCode, Bytes), String> {
        self.upstream.exchange(request, MAX_GRANT_BYTES, what).await
    }

    /// Fetches a token for every managed profile of `config` that holds none valid at `now`
    /// (one refresh per profile at a time, cooldown respected), so that readiness and the first
    /// request need not wait. Failures are recorded for [`TokenManager::status`].
    pub async fn obtain_missing(&self, config: &Config, now: Timestamp) {
        let missing = config
            .profiles
            .iter()
            .filter(|p| self.entry(p).is_ok_and(|e| e.valid_access(now).is_none()));
        for profile in missing {
            let _ = self.token(profile, now).await;
        }
    }

    /// Whether every managed profile holds a token valid at `now`, with a reason per profile
    /// that does not. For readiness checks.
    pub fn status(&self, now: Timestamp) -> Vec<(String, Result<u64, String>)> {
        let now = now.secs();
        let mut out: Vec<(String, Result<u64, String>)> = self
            .entries
            .values()
            .map(|e| {
                let state = e.lock();
                let status = match &state.access {
                    Some(a) if now < a.expires_at => Ok(a.expires_at),
                    _ => Err(state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no access token obtained yet".to_owned())),
                };
                (e.name.clone(), status)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn entry(&self, profile: &Profile) -> Result<Arc<Entry>, TokenError> {
        let name = profile.qualified_name();
        self.entries
            .get(&name)
            .cloned()
            .ok_or(TokenError::Unavailable {
                profile: name,
                reason: "the profile's tokens are not managed by this proxy instance".to_owned(),
            })
    }

    /// Refreshes with the entry's refresh lock held; on failure falls back to a still-valid
    /// token, else reports why none is available.
    async fn refresh_locked(
        &self,
        entry: &Entry,
        now: Timestamp,
        rejected: Option<&Secret>,
    ) -> Result<Secret, TokenError> {
        let unavailable = |reason: String| TokenError::Unavailable {
            profile: entry.name.clone(),
            reason,
        };
        let cooling = {
            let state = entry.lock();
            state
                .cooldown_until
                .filter(|until| now < *until)
                .map(|_| state.last_error.clone().unwrap_or_default())
        };
        if cooling.is_some() {
            // Another replica may have refreshed meanwhile.
            if let Some(store) = self.store.as_ref().filter(|s| s.shared()) {
                if let Ok(loaded) = store.load(&entry.name).await {
                    if let Some(token) = self.adopt(entry, loaded, now, rejected) {
                        self.metrics.token_adopted(&entry.name);
                        return Ok(token);
                    }
                }
            }
        }
        if let Some(last_error) = cooling {
            return match entry.valid_access(now) {
                Some(access) => Ok(access.token),
                None => Err(unavailable(format!("{last_error} (retrying shortly)"))),
            };
        }
        let lease = match self.take_lease(entry, now, rejected).await {
            Ok(Taken::Lease(lease)) => lease,
            Ok(Taken::Adopted(token)) => return Ok(token),
            Err(reason) => {
                entry.lock().last_error = Some(reason.clone());
                return match entry.valid_access(now) {
                    Some(access) => Ok(access.token),
                    None => Err(unavailable(reason)),
                };
            }
        };
        // A shared lease runs out: the endpoint's answer must come back before it does, or
        // another replica may send the same single-use refresh token.
        let budget = self.store.as_ref().filter(|s| s.shared()).map(|_| {
            self.lease_ttl
                .saturating_sub(lease.taken_at.elapsed() + LEASE_MARGIN)
        });
        let fetched = self.fetch(entry, now, budget).await;
        let unpersisted = entry.unpersisted.load(Ordering::Relaxed);
        if let Some(store) = self.store.as_ref().filter(|s| s.shared() && !unpersisted) {
            if let Err(e) = store.release(&lease).await {
                self.metrics.token_store_error("release");
                tracing::warn!(profile = %entry.name, error = %e, "could not release the refresh lease; it runs out by itself");
            }
        }
        match fetched {
            Ok(access) => {
                self.metrics.token_refresh(&entry.name, Outcome::Success);
                tracing::info!(
                    profile = %entry.name,
                    expires_in_s = access.expires_at.saturating_sub(now.secs()),
                    "access token refreshed"
                );
                Ok(access.token)
            }
            Err(reason) => {
                self.metrics.token_refresh(&entry.name, Outcome::Failure);
                let mut state = entry.lock();
                state.failures = state.failures.saturating_add(1);
                let backoff = COOLDOWN_FIRST_MS
                    .saturating_mul(1u64 << state.failures.saturating_sub(1).min(6))
                    .min(COOLDOWN_MAX_MS);
                state.cooldown_until =
                    Some(Timestamp::from_millis(now.millis().saturating_add(backoff)));
                state.last_error = Some(reason.clone());
                drop(state);
                tracing::warn!(profile = %entry.name, error = %reason, "access token refresh failed");
                match entry.valid_access(now) {
                    Some(access) => Ok(access.token),
                    None => Err(unavailable(reason)),
                }
            }
        }
    }

    /// One call to the token endpoint; the result is persisted before it is used.
    async fn fetch(
        &self,
        entry: &Entry,
        now: Timestamp,
        budget: Option<Duration>,
    ) -> Result<Access, String> {
        let refresh_token = entry.lock().refresh_token.clone();
        let request = entry
            .endpoint
            .grant_request(refresh_token.as_ref(), now)
            .map_err(|e| e.to_string())?;
        // Never log the request: a grant request may carry the app secret, even in its URL.
        let exchange = self.exchange(request, "the token endpoint");
        let (status, body) = match budget {
            None => exchange.await?,
            Some(budget) => tokio::time::timeout(budget, exchange).await.map_err(|_| {
                format!(
                    "the token endpoint did not answer within the refresh lease ({} ms: [upstream] connect_timeout_ms + request_timeout_ms)",
                    self.lease_ttl.as_millis()
                )
            })??,
        };
        let grant = match entry.endpoint.parse_grant(status, &body, now) {
            Ok(grant) => grant,
            Err(e) => {
                if let Some(rotated) = entry.endpoint.salvage_refresh_token(&body) {
                    self.keep_refresh_token(entry, rotated, None, now.secs())
                        .await;
                }
                return Err(e.to_string());
            }
        };
        let now = now.secs();
        if grant.expires_at <= now {
            if let Some(rotated) = grant.refresh_token {
                self.keep_refresh_token(entry, rotated, grant.refresh_expires_at, now)
                    .await;
            }
            return Err(format!(
                "the token endpoint granted a token that expired already (at {}, now {now}): check the machine's clock",
                grant.expires_at
            ));
        }
        let margin = entry.endpoint.refresh_margin_secs();
        let access = Access {
            token: grant.access_token.clone(),
            expires_at: grant.expires_at,
            refresh_at: refresh_at(now, grant.expires_at, margin),
        };
        let (refresh_token, refresh_expires_at) = {
            let state = entry.lock();
            match grant.refresh_token {
                Some(rotated) if entry.endpoint.refresh_expiry_carries_over() => (
                    Some(rotated),
                    earlier(state.refresh_expires_at, grant.refresh_expires_at),
                ),
                Some(rotated) => (Some(rotated), grant.refresh_expires_at),
                None => (state.refresh_token.clone(), state.refresh_expires_at),
            }
        };
        warn_if_refresh_runs_out(&entry.name, refresh_expires_at, now);
        if let Some(store) = &self.store {
            let stored = StoredProfile {
                seed: entry.seed.clone(),
                access_token: Some(access.token.expose().to_owned()),
                expires_at: Some(access.expires_at),
                obtained_at: Some(now),
                refresh_token: refresh_token.as_ref().map(|t| t.expose().to_owned()),
                refresh_expires_at,
            };
            // A rotated refresh token may have invalidated the old one: the new one must reach
            // the store before anything uses it. If it cannot, keep going in memory but say so.
            let expected = entry.lock().version;
            match self
                .put(store.as_ref(), &entry.name, expected, stored)
                .await
            {
                Ok(Some(version)) => {
                    entry.unpersisted.store(false, Ordering::Relaxed);
                    entry.lock().version = version;
                }
                Ok(None) => {
                    // Only after a lost lease: the newer pair in the store wins.
                    self.metrics.token_store_conflict(&entry.name);
                    tracing::error!(profile = %entry.name, store = %store.describe(), "another replica stored newer tokens while this one refreshed (its lease ran out): keeping theirs");
                    if let Ok(loaded) = store.load(&entry.name).await {
                        self.adopt(entry, loaded, Timestamp::from_secs(now), None);
                    }
                    return Ok(entry
                        .valid_access(Timestamp::from_secs(now))
                        .unwrap_or(access));
                }
                Err(e) => {
                    entry.unpersisted.store(true, Ordering::Relaxed);
                    tracing::error!(profile = %entry.name, error = %e, "could not persist the new tokens; a restart would lose them");
                }
            }
        }
        let mut state = entry.lock();
        state.access = Some(access.clone());
        state.refresh_token = refresh_token;
        state.refresh_expires_at = refresh_expires_at;
        state.failures = 0;
        state.cooldown_until = None;
        state.last_error = None;
        Ok(access)
    }
}

impl TokenManager {
    /// A half-failed refresh (an answer with a rotated refresh token but no usable access token):
    /// the refresh token sent may be spent already, so the new one replaces it, on disk first,
    /// and the access token in hand (if any) stays.
    async fn keep_refresh_token(
        &self,
        entry: &Entry,
        rotated: Secret,
        expires_at: Option<u64>,
        now: u64,
    ) {
        let (stored, expected) = {
            let state = entry.lock();
            if state.refresh_token.as_ref() == Some(&rotated) {
                return;
            }
            let refresh_expires_at = if entry.endpoint.refresh_expiry_carries_over() {
                earlier(state.refresh_expires_at, expires_at)
            } else {
                expires_at
            };
            let access = state.access.as_ref().filter(|a| a.expires_at > now);
            let stored = StoredProfile {
                seed: entry.seed.clone(),
                access_token: access.map(|a| a.token.expose().to_owned()),
                expires_at: access.map(|a| a.expires_at),
                obtained_at: Some(now),
                refresh_token: Some(rotated.expose().to_owned()),
                refresh_expires_at,
            };
            (stored, state.version)
        };
        let refresh_expires_at = stored.refresh_expires_at;
        if let Some(store) = &self.store {
            match self
                .put(store.as_ref(), &entry.name, expected, stored)
                .await
            {
                Ok(Some(version)) => entry.lock().version = version,
                Ok(None) => {
                    self.metrics.token_store_conflict(&entry.name);
                    tracing::error!(profile = %entry.name, "another replica stored newer tokens while this one refreshed: keeping theirs");
                    return;
                }
                Err(e) => {
                    entry.unpersisted.store(true, Ordering::Relaxed);
                    tracing::error!(profile = %entry.name, error = %e, "could not persist the rotated refresh token; a restart would lose it");
                }
            }
        }
        tracing::warn!(
            profile = %entry.name,
            "the token endpoint rotated the refresh token in an answer without a usable access token: keeping the new refresh token"
        );
        let mut state = entry.lock();
        state.refresh_token = Some(rotated);
        state.refresh_expires_at = refresh_expires_at;
    }

    /// A write that must not be lost (a rotated refresh token): a few tries within the lease.
    async fn put(
        &self,
        store: &dyn Store,
        profile: &str,
        expected: u64,
        entry: StoredProfile,
    ) -> Result<Option<u64>, StoreError> {
        let mut tries = 0;
        loop {
            match store.put(profile, expected, entry.clone()).await {
                Ok(written) => return Ok(written),
                Err(e) => {
                    self.metrics.token_store_error("put");
                    tries += 1;
                    if tries >= 3 || !store.shared() {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Whether the cached token of `entry` is due a look at the shared store (one caller wins).
    fn sync_due(&self, entry: &Entry, now: Timestamp) -> bool {
        if !self.store.as_ref().is_some_and(|s| s.shared()) {
            return false;
        }
        let next = entry.next_sync_ms.load(Ordering::Relaxed);
        let now_ms = now.millis();
        now_ms >= next
            && entry
                .next_sync_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(SHARED_SYNC_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes what the shared store holds if it changed (a newer pair, or the access token
    /// invalidated by another replica). Unreachable: keeps the cached token.
    async fn sync(&self, entry: &Entry, now: Timestamp) {
        let Some(store) = &self.store else {
            return;
        };
        match store.load(&entry.name).await {
            Ok(loaded) => {
                let changed = {
                    let state = entry.lock();
                    let stored_access = loaded
                        .profile
                        .as_ref()
                        .and_then(|p| p.access_token.as_deref());
                    loaded.version != state.version
                        || stored_access != state.access.as_ref().map(|a| a.token.expose())
                };
                if changed {
                    self.adopt(entry, loaded, now, None);
                }
            }
            Err(e) => {
                self.metrics.token_store_error("load");
                tracing::debug!(profile = %entry.name, error = %e, "shared token store unreachable; using the cached token");
            }
        }
    }

    /// Takes the stored pair (if it descends from the configured credential) into `entry`;
    /// the access token when it is fresh and not `rejected`.
    fn adopt(
        &self,
        entry: &Entry,
        loaded: Versioned,
        now: Timestamp,
        rejected: Option<&Secret>,
    ) -> Option<Secret> {
        let now = now.secs();
        let mut state = entry.lock();
        state.version = loaded.version;
        let stored = loaded.profile.filter(|p| p.seed == entry.seed)?;
        if let Some(rt) = stored.refresh_token {
            state.refresh_token = Some(Secret::new(rt));
            state.refresh_expires_at = stored.refresh_expires_at;
        }
        let access = match (stored.access_token, stored.expires_at) {
            (Some(token), Some(expires_at))
                if now < expires_at && rejected.map_or(true, |r| r.expose() != token) =>
            {
                let token = Secret::new(token);
                // The same token keeps the refresh point drawn for it.
                let refresh_at = match &state.access {
                    Some(a) if a.token == token => a.refresh_at,
                    _ => refresh_at(
                        stored.obtained_at.unwrap_or(now),
                        expires_at,
                        entry.endpoint.refresh_margin_secs(),
                    ),
                };
                Some(Access {
                    token,
                    expires_at,
                    refresh_at,
                })
            }
            _ => None,
        };
        state.access = access.clone();
        if access.is_some() {
            state.failures = 0;
            state.cooldown_until = None;
            state.last_error = None;
        }
        access.filter(|a| now < a.refresh_at).map(|a| a.token)
    }

    /// Before a refresh: with a shared store, a fresh pair another replica stored, else this
    /// profile's lease (waiting while another replica holds it). Never a refresh without the
    /// lease: an unreachable store is an error (the reason names the store).
    async fn take_lease(
        &self,
        entry: &Entry,
        now: Timestamp,
        rejected: Option<&Secret>,
    ) -> Result<Taken, String> {
        let own = || backend::Lease {
            profile: entry.name.clone(),
            id: String::new(),
            taken_at: std::time::Instant::now(),
        };
        let Some(store) = self.store.as_ref().filter(|s| s.shared()) else {
            return Ok(Taken::Lease(own()));
        };
        let failed = |operation: &'static str, e: StoreError| {
            self.metrics.token_store_error(operation);
            tracing::warn!(profile = %entry.name, error = %e, "shared token store unavailable: no refresh without its lease");
            format!("{e} (no refresh without the store's lease: the proxy recovers by itself when the store is back)")
        };
        let deadline = std::time::Instant::now() + self.lease_ttl * 2 + Duration::from_millis(500);
        let mut waited = false;
        loop {
            let loaded = store
                .load(&entry.name)
                .await
                .map_err(|e| failed("load", e))?;
            if let Some(token) = self.adopt(entry, loaded, now, rejected) {
                self.metrics.token_adopted(&entry.name);
                return Ok(Taken::Adopted(token));
            }
            match store
                .acquire(&entry.name, self.lease_ttl)
                .await
                .map_err(|e| failed("lease", e))?
            {
                Some(lease) => {
                    // Another replica may have stored a new pair between the read and the lease.
                    let again = match store.load(&entry.name).await {
                        Ok(loaded) => Ok(self.adopt(entry, loaded, now, rejected)),
                        Err(e) => Err(failed("load", e)),
                    };
                    match again {
                        Ok(None) => return Ok(Taken::Lease(lease)),
                        other => {
                            if store.release(&lease).await.is_err() {
                                self.metrics.token_store_error("release");
                            }
                            let token = other?;
                            if let Some(token) = token {
                                self.metrics.token_adopted(&entry.name);
                                return Ok(Taken::Adopted(token));
                            }
                        }
                    }
                }
                None => {
                    // A refresh ahead of expiry elsewhere: the token in hand still works.
                    if let Some(access) = entry
                        .valid_access(now)
                        .filter(|a| rejected.map_or(true, |r| a.token != *r))
                    {
                        return Ok(Taken::Adopted(access.token));
                    }
                    if !waited {
                        waited = true;
                        self.metrics.token_lease_wait(&entry.name);
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(format!(
                            "another replica holds the refresh lease in token store {} and no new token arrived within {} ms",
                            store.describe(),
                            (self.lease_ttl * 2).as_millis()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(LEASE_POLL_MS)).await;
                }
            }
        }
    }
}

/// What [`TokenManager::take_lease`] got: the right to refresh, or another replica's token.
enum Taken {
    Lease(backend::Lease),
    Adopted(Secret),
}

/// Below `max` slots: drops the expired ones, then (if that is not enough) every idle one. A
/// slot in use (locked) stays: its request holds it anyway.
fn make_room(slots: &mut HashMap<String, RestrictedSlot>, max: usize, now: Timestamp) {
    if slots.len() < max {
        return;
    }
    slots.retain(|_, slot| match slot.try_lock() {
        Ok(held) => held.as_ref().is_some_and(|a| now.secs() < a.expires_at),
        Err(_) => true,
    });
    if slots.len() >= max {
        slots.retain(|_, slot| slot.try_lock().is_err());
    }
}

/// A restricted token is minted by one API host (one region) and only good there.
fn restricted_key(authority: &str, resource: &RestrictedResource) -> String {
    format!("{authority} {}", resource.cache_key())
}

/// The earlier of two optional expiries (an unknown one does not count).
fn earlier(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A refresh token whose lifetime refreshing does not renew runs out: say so ahead of time,
/// while the seller can still authorize again without an outage.
fn warn_if_refresh_runs_out(profile: &str, refresh_expires_at: Option<u64>, now: u64) {
    let Some(at) = refresh_expires_at else {
        return;
    };
    let left = at.saturating_sub(now);
    if left < REFRESH_EXPIRY_WARNING_SECS {
        tracing::warn!(
            profile = %profile,
            refresh_token_expires_in_s = left,
            "the refresh token expires soon and refreshing does not extend it: authorize the seller again and put the new refresh_token in the config"
        );
    }
}

/// When to refresh a token obtained at `obtained` that expires at `expires_at`, `margin`
/// seconds ahead (the marketplace's advice).
fn refresh_at(obtained: u64, expires_at: u64, margin: u64) -> u64 {
    let lifetime = expires_at.saturating_sub(obtained);
    let margin = (lifetime / 2).min(margin);
    let jitter_max = (lifetime / 10).min(REFRESH_JITTER_SECS);
    expires_at.saturating_sub(margin + random_below(jitter_max + 1))
}

/// A little randomness without a dependency: std's per-process random hash keys.
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % bound.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_before_expiry_with_bounded_jitter() {
        for _ in 0..50 {
            // eBay: 2 h tokens refresh 5 to 6 minutes early.
            let at = refresh_at(0, 7200, 300);
            assert!((7200 - 360..=7200 - 300).contains(&at), "{at}");
            // Short-lived tokens refresh after about half their life, never after expiry.
            let short = refresh_at(1000, 1030, 300);
            assert!((1012..=1015).contains(&short), "{short}");
        }
        assert_eq!(refresh_at(5, 5, 300), 5);
        // Shopee's ten minutes ahead of a 4 h token.
        let shopee = refresh_at(0, 14_400, 600);
        assert!((14_400 - 660..=14_400 - 600).contains(&shopee), "{shopee}");
    }

    #[test]
    fn a_full_restricted_cache_drops_expired_then_idle_tokens_never_one_in_use() {
        let slot = |expires_at: Option<u64>| -> RestrictedSlot {
            Arc::new(tokio::sync::Mutex::new(expires_at.map(|expires_at| {
                Access {
                    token: Secret::new("t"),
                    expires_at,
                    refresh_at: expires_at,
                }
            })))
        };
        let now = Timestamp::from_secs(100);
        let mut slots: HashMap<String, RestrictedSlot> = HashMap::new();
        slots.insert("expired".into(), slot(Some(50)));
        slots.insert("valid".into(), slot(Some(500)));
        make_room(&mut slots, 3, now);
        assert_eq!(slots.len(), 2, "not full: nothing dropped");
        slots.insert("empty".into(), slot(None));
        make_room(&mut slots, 3, now);
        assert_eq!(slots.keys().collect::<Vec<_>>(), ["valid"]);

        slots.insert("busy".into(), slot(None));
        slots.insert("other".into(), slot(Some(500)));
        let busy = Arc::clone(&slots["busy"]);
        let _held = busy.try_lock().unwrap();
        make_room(&mut slots, 2, now);
        assert_eq!(slots.keys().collect::<Vec<_>>(), ["busy"]);
    }

    #[test]
    fn the_earlier_known_refresh_expiry_wins() {
        assert_eq!(earlier(Some(5), Some(9)), Some(5));
        assert_eq!(earlier(Some(9), Some(5)), Some(5));
        assert_eq!(earlier(None, Some(5)), Some(5));
        assert_eq!(earlier(Some(5), None), Some(5));
        assert_eq!(earlier(None, None), None);
    }
}
