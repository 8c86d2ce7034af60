//! Keys a marketplace names by id (eBay's `kid`): fetched through the marketplace's key service,
//! cached for about an hour, one fetch at a time per key (callers for the same key wait for it),
//! an unknown id fetched at once, and failed fetches not repeated for a few seconds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::config::InboundRoute;
use crate::marketplace::webhook::PublicKey;
use crate::proxy::Proxy;

/// How long a fetched key is used before it is fetched again (eBay's advice).
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// After a failed fetch, requests naming that key are refused this long without a new fetch.
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
/// Keys kept at most; past it, expired and failed ones are dropped, and a valid one never is.
const MAX_KEYS: usize = 256;
/// Key ids never seen before fetched per profile per minute, at most: the id comes from an
/// unverified header, and each fetch spends the app's key-service quota.
const MAX_UNKNOWN_FETCHES_PER_MINUTE: u32 = 10;
/// The largest key service answer read.
const MAX_KEY_ANSWER_BYTES: usize = 64 * 1024;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The I/O behind the cache: one fetch of key `kid` for `route`'s profile.
pub trait KeyFetch: Send + Sync {
    fn fetch<'a>(
        &'a self,
        route: &'a InboundRoute,
        kid: &'a str,
    ) -> BoxFuture<'a, Result<PublicKey, String>>;
}

#[derive(Default)]
struct Slot {
    key: Option<(PublicKey, Instant)>,
    failed_at: Option<Instant>,
}

type Slots = HashMap<(String, String), Arc<tokio::sync::Mutex<Slot>>>;

pub struct KeyCache {
    fetch: Arc<dyn KeyFetch>,
    ttl: Duration,
    slots: Mutex<Slots>,
    /// Per profile: when the current minute began, and the unknown ids fetched in it.
    unknown_fetches: Mutex<HashMap<String, (Instant, u32)>>,
}

impl KeyCache {
    pub fn new(fetch: Arc<dyn KeyFetch>, ttl: Duration) -> KeyCache {
        KeyCache {
            fetch,
            ttl,
            slots: Mutex::new(HashMap::new()),
            unknown_fetches: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more never-seen id may be fetched for `profile` this minute (and counts it).
    fn may_fetch_unknown(&self, profile: &str) -> bool {
        let mut counts = match self.unknown_fetches.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (started, count) = counts
            .entry(profile.to_owned())
            .or_insert((Instant::now(), 0));
        if started.elapsed() >= Duration::from_secs(60) {
            *started = Instant::now();
            *count = 0;
        }
        if *count >= MAX_UNKNOWN_FETCHES_PER_MINUTE {
            return false;
        }
        *count += 1;
        true
    }

    /// Key `kid` for `route`'s profile: cached while fresh, else fetched (once for all callers).
    pub async fn get(&self, route: &InboundRoute, kid: &str) -> Result<PublicKey, String> {
        let id = (route.profile.qualified_name(), kid.to_owned());
        let slot = {
            let mut slots = match self.slots.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if slots.len() >= MAX_KEYS && !slots.contains_key(&id) {
                let ttl = self.ttl;
                slots.retain(|_, slot| {
                    slot.try_lock().map_or(true, |s| {
                        s.key.as_ref().is_some_and(|(_, at)| at.elapsed() < ttl)
                    })
                });
                if slots.len() >= MAX_KEYS {
                    return Err(format!(
                        "{MAX_KEYS} valid signing keys are held already; not fetching another"
                    ));
                }
            }
            Arc::clone(slots.entry(id).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some((key, at)) = &slot.key {
            if at.elapsed() < self.ttl {
                return Ok(key.clone());
            }
        }
        if slot
            .failed_at
            .is_some_and(|at| at.elapsed() < FAILURE_BACKOFF)
        {
            return Err("the key service failed moments ago; not asking again yet".to_owned());
        }
        if slot.key.is_none() && !self.may_fetch_unknown(&route.profile.qualified_name()) {
            return Err(format!(
                "more than {MAX_UNKNOWN_FETCHES_PER_MINUTE} unknown key ids in the last minute; not asking the key service"
            ));
        }
        match self.fetch.fetch(route, kid).await {
            Ok(key) => {
                slot.key = Some((key.clone(), Instant::now()));
                slot.failed_at = None;
                Ok(key)
            }
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }
}

/// Fetches keys through the proxy's own upstream client, authorized by the profile's token
/// (eBay's application token) from the token manager.
pub struct ProxyKeyFetch {
    pub proxy: Proxy,
}

impl KeyFetch for ProxyKeyFetch {
    fn fetch<'a>(
        &'a self,
        route: &'a InboundRoute,
        kid: &'a str,
    ) -> BoxFuture<'a, Result<PublicKey, String>> {
        Box::pin(async move {
            let state = self.proxy.state();
            let now = state.clock.now();
            let token = state
                .tokens
                .token(&route.profile, now)
                .await
                .map_err(|e| format!("no application token for the key service: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "profile {} has no token: the key service needs an application token",
                        route.profile.label()
                    )
                })?;
            let request = route.verifier.key_request(kid, &token)?;
            let request = request.map(|b| {
                http_body_util::Full::new(b)
                    .map_err(|never| match never {})
                    .boxed()
            });
            let response = state
                .upstream
                .send(request)
                .await
                .map_err(|e| format!("the key service is unreachable: {e}"))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_KEY_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the key service's answer failed: {e}"))?
                .to_bytes();
            route.verifier.parse_key(status, &body)
        })
    }
}
