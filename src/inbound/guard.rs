//! The replay guard's seam: where verified event ids are claimed and settled. In memory (one
//! process: the [`Dedupe`] LRU), or shared through the Redis token store so every replica, and a
//! restarted process, sees the same accepted ids. Either way an id counts as accepted only after
//! the app took the event, and a copy arriving while another is with the app is told to retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dedupe::{Begin, Dedupe};
use crate::token::redis_replay::ReplayBegin;
use crate::token::redis_store::RedisStore;
use crate::token::store::StoreError;

/// How long past a route's deadline a shared in-flight mark outlives its claim: a process that
/// dies mid-forward must not block the id for good, but a live one must settle before the mark
/// runs out (the app's answer is bounded by the deadline, the write by the store's timeouts).
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(10);

/// How long an event waits for the shared store's verdict before it is answered 503 (retry): a
/// small share of the marketplace's deadline, whatever `[store]`'s own timeouts are.
pub const REPLAY_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

pub enum ReplayGuard {
    Memory(Mutex<Dedupe>),
    Shared(Shared),
}

pub struct Shared {
    /// Ids this process saw accepted: answered without a round trip, and still refused while
    /// Redis is away. Never consulted for in-flight copies, which only Redis can tell apart.
    front: Mutex<Dedupe>,
    store: Arc<RedisStore>,
    retention: Duration,
}

/// What [`ReplayGuard::begin`] found.
pub enum Begun<'a> {
    New(Claim<'a>),
    Duplicate,
    InFlight,
}

fn lock(d: &Mutex<Dedupe>) -> std::sync::MutexGuard<'_, Dedupe> {
    d.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReplayGuard {
    pub fn memory(capacity: usize) -> ReplayGuard {
        ReplayGuard::Memory(Mutex::new(Dedupe::new(capacity)))
    }

    /// `capacity` bounds the in-process front cache; `retention` is how long Redis keeps an
    /// accepted id.
    pub fn shared(store: Arc<RedisStore>, capacity: usize, retention: Duration) -> ReplayGuard {
        ReplayGuard::Shared(Shared {
            front: Mutex::new(Dedupe::new(capacity)),
            store,
            retention,
        })
    }

    /// How logs name it.
    pub fn describe(&self) -> &'static str {
        match self {
            ReplayGuard::Memory(_) => "memory",
            ReplayGuard::Shared(_) => "redis",
        }
    }

    /// Claims `event_id` of `scope` (the profile) for one delivery to the app. Errs only when the
    /// shared store cannot answer: then nothing is known, and nothing may be forwarded.
    pub async fn begin(
        &self,
        scope: &Arc<str>,
        event_id: &str,
        in_flight_ttl: Duration,
    ) -> Result<Begun<'_>, StoreError> {
        let key = format!("{scope}\n{event_id}");
        let claim = |shared_claim| Claim {
            guard: self,
            scope: Arc::clone(scope),
            event_id: event_id.to_owned(),
            key: key.clone(),
            shared_claim,
            settled: false,
        };
        match self {
            ReplayGuard::Memory(d) => Ok(match lock(d).begin(&key) {
                Begin::New => Begun::New(claim(None)),
                Begin::Duplicate => Begun::Duplicate,
                Begin::InFlight => Begun::InFlight,
            }),
            ReplayGuard::Shared(shared) => {
                if lock(&shared.front).was_accepted(&key) {
                    return Ok(Begun::Duplicate);
                }
                match shared
                    .store
                    .replay_begin(scope, event_id, in_flight_ttl)
                    .await?
                {
                    ReplayBegin::New { claim: id } => Ok(Begun::New(claim(Some(id)))),
                    ReplayBegin::Accepted => {
                        lock(&shared.front).accepted(&key);
                        Ok(Begun::Duplicate)
                    }
                    ReplayBegin::InFlight => Ok(Begun::InFlight),
                }
            }
        }
    }
}

/// An event id handed to the app and not yet settled. Dropped unsettled (the sender went away
/// mid-forward), it is released so the marketplace's retry is delivered.
pub struct Claim<'a> {
    guard: &'a ReplayGuard,
    scope: Arc<str>,
    event_id: String,
    key: String,
    /// The shared in-flight mark's owner id.
    shared_claim: Option<String>,
    settled: bool,
}

impl Claim<'_> {
    /// Accepted ids become duplicates; others are released for the next copy. A shared store
    /// that fails here is logged, not answered: the app's answer stands either way.
    /// `wait`: how long the answer may wait for a shared store's write (what is left of the
    /// route's deadline); the write goes on without it.
    pub async fn settle(&mut self, accepted: bool, wait: Duration) {
        if self.settled {
            return;
        }
        self.settled = true;
        let shared = match self.guard {
            ReplayGuard::Memory(d) => {
                let mut d = lock(d);
                if accepted {
                    d.accepted(&self.key);
                } else {
                    d.abandoned(&self.key);
                }
                return;
            }
            ReplayGuard::Shared(shared) => shared,
        };
        if accepted {
            lock(&shared.front).accepted(&self.key);
        }
        // Its own task, so a sender hanging up now cannot leave the mark half written; awaited
        // briefly, so a replay right after this answer already finds the id settled. A slow
        // store does not hold the answer longer: the in-flight mark keeps other copies off
        // until the write lands.
        let task = tokio::spawn(settle_shared(
            Arc::clone(&shared.store),
            Arc::clone(&self.scope),
            self.event_id.clone(),
            self.shared_claim.clone().unwrap_or_default(),
            accepted.then_some(shared.retention),
        ));
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait.min(REPLAY_CHECK_TIMEOUT), task).await;
        }
    }
}

async fn settle_shared(
    store: Arc<RedisStore>,
    scope: Arc<str>,
    event_id: String,
    claim: String,
    accepted_for: Option<Duration>,
) {
    let written = match accepted_for {
        Some(retention) => {
            store
                .replay_accept(&scope, &event_id, &claim, retention)
                .await
        }
        None => store.replay_abandon(&scope, &event_id, &claim).await,
    };
    if let Err(e) = written {
        let consequence = if accepted_for.is_some() {
            "other replicas may deliver a replay of it once its in-flight mark runs out"
        } else {
            "its retries get 503 until its in-flight mark runs out"
        };
        tracing::warn!(
            target: "signproxy::inbound",
            profile = %scope,
            event_id = %event_id,
            error = %e,
            "cannot settle the event id in the shared store: {consequence}"
        );
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        match self.guard {
            ReplayGuard::Memory(d) => lock(d).abandoned(&self.key),
            ReplayGuard::Shared(shared) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(settle_shared(
                        Arc::clone(&shared.store),
                        Arc::clone(&self.scope),
                        std::mem::take(&mut self.event_id),
                        self.shared_claim.take().unwrap_or_default(),
                        None,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn begin(guard: &ReplayGuard) -> Begun<'_> {
        guard
            .begin(&Arc::from("shop.default"), "k", Duration::from_secs(1))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_claim_dropped_unsettled_releases_the_id() {
        let guard = ReplayGuard::memory(4);
        let Begun::New(claim) = begin(&guard).await else {
            panic!("new")
        };
        assert!(matches!(begin(&guard).await, Begun::InFlight));
        drop(claim);
        let Begun::New(mut claim) = begin(&guard).await else {
            panic!("released")
        };
        claim.settle(true, REPLAY_CHECK_TIMEOUT).await;
        drop(claim);
        assert!(matches!(begin(&guard).await, Begun::Duplicate));
    }

    #[tokio::test]
    async fn a_refused_event_is_delivered_again() {
        let guard = ReplayGuard::memory(4);
        let Begun::New(mut claim) = begin(&guard).await else {
            panic!("new")
        };
        claim.settle(false, REPLAY_CHECK_TIMEOUT).await;
        // Settled once: dropping it changes nothing more.
        drop(claim);
        assert!(matches!(begin(&guard).await, Begun::New(_)));
    }

    #[tokio::test]
    async fn an_unreachable_shared_store_answers_an_error_never_new() {
        let settings = crate::config::RedisSettings {
            // Nothing listens on port 1 of loopback.
            url: crate::secret::Secret::new("redis://127.0.0.1:1/0"),
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_millis(200),
            response_timeout: Duration::from_millis(200),
        };
        let store = Arc::new(RedisStore::new(&settings).unwrap());
        let guard = ReplayGuard::shared(store, 4, Duration::from_secs(60));
        assert!(guard
            .begin(&Arc::from("shop.default"), "k", Duration::from_secs(1))
            .await
            .is_err());
        assert_eq!(guard.describe(), "redis");
    }
}
