//! Inbound replay marks in the shared Redis store, on the token store's connection: per event id
//! an in-flight mark (`SET NX PX`, owned by a random claim id) while one copy is with the app, and
//! an accepted mark kept for the retention once the app took it. Keys live under the store's
//! prefix as `{prefix}inbound:{scope}:{sha256(event id)}:{accepted|inflight}`; the id is hashed so
//! a sender's choice of id never makes a long or odd key.

use std::sync::OnceLock;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use super::redis_store::{lease_id, RedisStore};
use super::store::StoreError;

/// 1: already accepted. 0: claimed (the in-flight mark is ours). 2: another claim holds it.
/// One script, so no copy slips in between the accepted check and the claim.
const BEGIN: &str = r"
if redis.call('GET', KEYS[1]) then return 1 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
return 2
";

/// Records the id as accepted, then drops the in-flight mark if it is still ours (a mark that
/// ran out and was claimed again belongs to that other copy).
const ACCEPT: &str = r"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
";

/// Drops the in-flight mark only if it is still ours.
const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn script(cell: &'static OnceLock<Script>, code: &str) -> Script {
    cell.get_or_init(|| Script::new(code)).clone()
}

static BEGIN_SCRIPT: OnceLock<Script> = OnceLock::new();
static ACCEPT_SCRIPT: OnceLock<Script> = OnceLock::new();
static ABANDON_SCRIPT: OnceLock<Script> = OnceLock::new();

/// What the shared store knows of an event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayBegin {
    /// Claimed for this copy: settle it with [`RedisStore::replay_accept`] or
    /// [`RedisStore::replay_abandon`] and this claim id.
    New {
        claim: String,
    },
    Accepted,
    InFlight,
}

/// The two keys of one event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayKeys {
    pub accepted: String,
    pub in_flight: String,
}

/// `scope` (the profile) comes from the config; `event_id` from the sender, hence hashed.
pub fn replay_keys(prefix: &str, scope: &str, event_id: &str) -> ReplayKeys {
    let digest = hex::encode(Sha256::digest(event_id.as_bytes()));
    let base = format!("{prefix}inbound:{scope}:{digest}");
    ReplayKeys {
        accepted: format!("{base}:accepted"),
        in_flight: format!("{base}:inflight"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Claims `event_id` for `in_flight_ttl` unless it was accepted or another copy holds it.
    pub async fn replay_begin(
        &self,
        scope: &str,
        event_id: &str,
        in_flight_ttl: Duration,
    ) -> Result<ReplayBegin, StoreError> {
        let keys = replay_keys(self.key_prefix(), scope, event_id);
        let claim = lease_id();
        let value = claim.clone();
        let ttl = millis(in_flight_ttl);
        let script = script(&BEGIN_SCRIPT, BEGIN);
        let found: i64 = self
            .run("checking the event id", move |mut c| {
                Box::pin(async move {
                    let mut invocation = script.key(keys.accepted);
                    invocation.key(keys.in_flight).arg(value).arg(ttl);
                    invocation.invoke_async(&mut c).await
                })
            })
            .await?;
        Ok(match found {
            0 => ReplayBegin::New { claim },
            1 => ReplayBegin::Accepted,
            _ => ReplayBegin::InFlight,
        })
    }

    /// The app took the event: later copies are duplicates for `retention`.
    pub async fn replay_accept(
        &self,
        scope: &str,
        event_id: &str,
        claim: &str,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let keys = replay_keys(self.key_prefix(), scope, event_id);
        let claim = claim.to_owned();
        let keep = millis(retention);
        let script = script(&ACCEPT_SCRIPT, ACCEPT);
        let _: i64 = self
            .run("recording the accepted event id", move |mut c| {
                Box::pin(async move {
                    let mut invocation = script.key(keys.accepted);
                    invocation.key(keys.in_flight).arg(claim).arg(keep);
                    invocation.invoke_async(&mut c).await
                })
            })
            .await?;
        Ok(())
    }

    /// The app did not take the event: the next copy is delivered.
    pub async fn replay_abandon(
        &self,
        scope: &str,
        event_id: &str,
        claim: &str,
    ) -> Result<(), StoreError> {
        let keys = replay_keys(self.key_prefix(), scope, event_id);
        let claim = claim.to_owned();
        let script = script(&ABANDON_SCRIPT, ABANDON);
        let _: i64 = self
            .run("releasing the event id", move |mut c| {
                Box::pin(async move {
                    script
                        .key(keys.in_flight)
                        .arg(claim)
                        .invoke_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_and_hash_the_id() {
        let keys = replay_keys("signproxy:", "shop.default", "7380066284010030890");
        let expected = hex::encode(Sha256::digest(b"7380066284010030890"));
        assert_eq!(
            keys.accepted,
            format!("signproxy:inbound:shop.default:{expected}:accepted")
        );
        assert_eq!(
            keys.in_flight,
            format!("signproxy:inbound:shop.default:{expected}:inflight")
        );
    }

    #[test]
    fn a_huge_or_odd_id_still_makes_a_short_plain_key() {
        let id = format!("{}\r\n*3\r\n$3\r\nDEL\r\n{}", "x".repeat(100_000), "\u{0}");
        let keys = replay_keys("p:", "shop.default", &id);
        assert_eq!(
            keys.accepted.len(),
            "p:inbound:shop.default:".len() + 64 + ":accepted".len()
        );
        assert!(keys
            .accepted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._".contains(&b)));
    }

    #[test]
    fn ids_and_scopes_never_share_keys() {
        let a = replay_keys("p:", "shop.a", "1");
        assert_ne!(a, replay_keys("p:", "shop.b", "1"));
        assert_ne!(a, replay_keys("p:", "shop.a", "2"));
        assert_ne!(a.accepted, a.in_flight);
        // Never one of the token store's own keys (`{prefix}{profile}`, `...:lease`).
        assert!(a.accepted.starts_with("p:inbound:"));
    }
}
