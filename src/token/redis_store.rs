//! The Redis token store, shared by many replicas: one hash per profile (`{prefix}{profile}`:
//! version, seed, access and refresh tokens and their expiries, stored as in the file), a lease
//! key beside it (`{prefix}{profile}:lease`, `SET NX PX`), and Lua scripts for the
//! compare-and-swap write, the lease release (only the holder's) and the invalidation. The
//! connection is made on first use and re-made after Redis comes back; no error names the
//! URL's password.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::backend::{Lease, Store, StoreFuture, Versioned};
use super::store::{StoreError, StoredProfile};
use crate::config::{redacted_url, RedisSettings};

/// After a failed connection attempt, requests fail fast for this long instead of each waiting
/// for its own connect timeout.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Writes the pair if the version is still ARGV[1]; returns the new version, or -1.
const CAS: &str = r"
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then return -1 end
local next = tonumber(current) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', tostring(next), unpack(ARGV, 2))
return next
";

/// Deletes the lease only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Forgets the access token if it is still the rejected one.
const INVALIDATE: &str = r"
if redis.call('HGET', KEYS[1], 'at') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'at', 'exp', 'obt')
  return 1
end
return 0
";

pub struct RedisStore {
    settings: RedisSettings,
    client: redis::Client,
    described: String,
    connection: tokio::sync::Mutex<Connection>,
    cas: Script,
    release: Script,
    invalidate: Script,
}

#[derive(Default)]
struct Connection {
    manager: Option<ConnectionManager>,
    failed: Option<(Instant, String)>,
}

impl RedisStore {
    /// Checks the settings; connects on first use (Redis may be down at start).
    pub fn new(settings: &RedisSettings) -> Result<RedisStore, StoreError> {
        let described = format!(
            "redis {} (key prefix {:?})",
            redacted_url(settings.url.expose()),
            settings.key_prefix
        );
        let client = redis::Client::open(settings.url.expose()).map_err(|e| StoreError {
            store: described.clone(),
            message: format!("the URL is not valid ({:?}): fix [store] url", e.kind()),
        })?;
        Ok(RedisStore {
            settings: settings.clone(),
            client,
            described,
            connection: tokio::sync::Mutex::new(Connection::default()),
            cas: Script::new(CAS),
            release: Script::new(RELEASE),
            invalidate: Script::new(INVALIDATE),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    pub(super) fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    fn key(&self, profile: &str) -> String {
        format!("{}{profile}", self.settings.key_prefix)
    }

    fn lease_key(&self, profile: &str) -> String {
        format!("{}{profile}:lease", self.settings.key_prefix)
    }

    fn fail(&self, what: &str, e: &redis::RedisError) -> StoreError {
        // Error texts can quote what was sent or the address connected to; never the password.
        let mut message = e.to_string();
        let url = self.settings.url.expose();
        if let Some(password) = redis::parse_redis_url(url)
            .and_then(|u| u.password().map(str::to_owned).filter(|p| !p.is_empty()))
        {
            message = message.replace(&password, "***");
        }
        message = message.replace(url, &redacted_url(url));
        StoreError {
            store: self.described.clone(),
            message: format!("{what} failed: {message}"),
        }
    }

    /// Connects now, so that a first caller with a short deadline of its own (an inbound
    /// event's replay check) does not give up mid-connect, again and again.
    pub async fn warm_up(&self) {
        if let Err(e) = self.connection().await {
            tracing::warn!(error = %e, "the shared store is not reachable yet");
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut held = self.connection.lock().await;
        if let Some(manager) = &held.manager {
            return Ok(manager.clone());
        }
        if let Some((at, message)) = &held.failed {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(StoreError {
                    store: self.described.clone(),
                    message: message.clone(),
                });
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.settings.connect_timeout)
            .set_response_timeout(self.settings.response_timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        let attempt = tokio::time::timeout(
            self.settings.connect_timeout + self.settings.response_timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        let error = match attempt {
            Ok(Ok(manager)) => {
                held.failed = None;
                held.manager = Some(manager.clone());
                return Ok(manager);
            }
            Ok(Err(e)) => self.fail("connecting", &e),
            Err(_) => StoreError {
                store: self.described.clone(),
                message: format!(
                    "connecting timed out after {} ms: check that Redis runs and is reachable, or raise [store] connect_timeout_ms",
                    self.settings.connect_timeout.as_millis()
                ),
            },
        };
        held.failed = Some((Instant::now(), error.message.clone()));
        Err(error)
    }

    /// One command with the response timeout, whatever the connection does.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        command: impl FnOnce(ConnectionManager) -> redis::RedisFuture<'static, T>,
    ) -> Result<T, StoreError> {
        let connection = self.connection().await?;
        match tokio::time::timeout(
            self.settings.response_timeout + Duration::from_millis(100),
            command(connection),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.fail(what, &e)),
            Err(_) => Err(StoreError {
                store: self.described.clone(),
                message: format!(
                    "{what} timed out after {} ms: check Redis, or raise [store] response_timeout_ms",
                    self.settings.response_timeout.as_millis()
                ),
            }),
        }
    }
}

fn number(fields: &std::collections::HashMap<String, String>, name: &str) -> Option<u64> {
    fields.get(name).and_then(|v| v.parse().ok())
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn load<'a>(&'a self, profile: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(async move {
            let key = self.key(profile);
            let fields: std::collections::HashMap<String, String> = self
                .run("reading the tokens", move |mut c| {
                    Box::pin(
                        async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await },
                    )
                })
                .await?;
            let version = number(&fields, "v").unwrap_or(0);
            let profile = fields.get("seed").map(|seed| StoredProfile {
                seed: seed.clone(),
                access_token: fields.get("at").cloned(),
                expires_at: number(&fields, "exp"),
                obtained_at: number(&fields, "obt"),
                refresh_token: fields.get("rt").cloned(),
                refresh_expires_at: number(&fields, "rexp"),
            });
            Ok(Versioned { version, profile })
        })
    }

    fn put<'a>(
        &'a self,
        profile: &'a str,
        expected: u64,
        entry: StoredProfile,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let mut args: Vec<String> = vec![expected.to_string(), "seed".into(), entry.seed];
            let mut field = |name: &str, value: Option<String>| {
                if let Some(value) = value {
                    args.push(name.to_owned());
                    args.push(value);
                }
            };
            field("at", entry.access_token);
            field("exp", entry.expires_at.map(|v| v.to_string()));
            field("obt", entry.obtained_at.map(|v| v.to_string()));
            field("rt", entry.refresh_token);
            field("rexp", entry.refresh_expires_at.map(|v| v.to_string()));
            let key = self.key(profile);
            let script = self.cas.clone();
            let written: i64 = self
                .run("writing the tokens", move |mut c| {
                    Box::pin(async move {
                        let mut invocation = script.key(key);
                        for arg in &args {
                            invocation.arg(arg);
                        }
                        invocation.invoke_async(&mut c).await
                    })
                })
                .await?;
            Ok(u64::try_from(written).ok())
        })
    }

    fn acquire<'a>(&'a self, profile: &'a str, ttl: Duration) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let id = lease_id();
            let taken_at = Instant::now();
            let key = self.lease_key(profile);
            let value = id.clone();
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let set: Option<String> = self
                .run("taking the refresh lease", move |mut c| {
                    Box::pin(async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(value)
                            .arg("NX")
                            .arg("PX")
                            .arg(millis)
                            .query_async(&mut c)
                            .await
                    })
                })
                .await?;
            Ok(set.map(|_| Lease {
                profile: profile.to_owned(),
                id,
                taken_at,
            }))
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.lease_key(&lease.profile);
            let id = lease.id.clone();
            let script = self.release.clone();
            let _: i64 = self
                .run("releasing the refresh lease", move |mut c| {
                    Box::pin(async move { script.key(key).arg(id).invoke_async(&mut c).await })
                })
                .await?;
            Ok(())
        })
    }

    fn invalidate<'a>(&'a self, profile: &'a str, access_token: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(profile);
            let token = access_token.to_owned();
            let script = self.invalidate.clone();
            let _: i64 = self
                .run("invalidating the access token", move |mut c| {
                    Box::pin(async move { script.key(key).arg(token).invoke_async(&mut c).await })
                })
                .await?;
            Ok(())
        })
    }
}

/// 128 random bits (std's per-process random hash keys, the time and the process id).
pub(super) fn lease_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for round in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(round);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_differ() {
        assert_ne!(lease_id(), lease_id());
        assert_eq!(lease_id().len(), 32);
    }

    #[test]
    fn errors_never_carry_the_password() {
        let settings = RedisSettings {
            url: crate::secret::Secret::new("redis://user:hunter2pw@127.0.0.1:1/0"),
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_millis(100),
            response_timeout: Duration::from_millis(100),
        };
        let store = RedisStore::new(&settings).unwrap();
        let e = redis::RedisError::from((
            redis::ErrorKind::IoError,
            "boom",
            "redis://user:hunter2pw@127.0.0.1:1/0 hunter2pw".to_owned(),
        ));
        let text = store.fail("connecting", &e).to_string();
        assert!(!text.contains("hunter2pw"), "{text}");
        assert!(text.contains("redis://127.0.0.1:1/0"), "{text}");
    }
}
