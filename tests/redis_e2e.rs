//! End to end, many replicas on one Redis token store: real `signproxy` processes sharing a real
//! `redis-server` (started per test on a free 127.0.0.1 port, in a temp folder) and one TLS test
//! token endpoint that enforces single-use refresh tokens, as TikTok's does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{TIKTOK_APP_KEY, TIKTOK_APP_SECRET};
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_signproxy");
const HOST: &str = "open-api.tiktokglobalshop.com";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// redis-server, our own

struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        redis
    }

    /// (Re)starts the server on the same port, with no persistence: a restart loses every key.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.query(&["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con)
    }

    fn exists(&self, key: &str) -> bool {
        matches!(self.query(&["EXISTS", key]), Ok(redis::Value::Int(1)))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The token endpoint: single-use refresh tokens

#[derive(Default)]
struct Ledger {
    /// The one refresh token that works now.
    current: String,
    grants: usize,
    /// Refresh tokens presented that were already spent (or never issued).
    reused: Vec<String>,
    /// Access token → expiry (Unix seconds).
    issued: HashMap<String, u64>,
    /// API requests that carried an expired or unknown access token.
    stale_uses: usize,
    /// Access tokens the API saw.
    used: HashSet<String>,
    lifetime: u64,
    /// Calls to hold without answering (and without spending the token).
    hang_next: usize,
    calls: usize,
    /// Access tokens the API answers "expired" (TikTok 105002) for, and how often it did.
    rejected: HashSet<String>,
    rejections: usize,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct World {
    ca: TestCa,
    upstream: TestUpstream,
    ledger: Arc<Mutex<Ledger>>,
}

impl World {
    fn new(lifetime: u64) -> World {
        let ca = TestCa::new();
        let upstream =
            TestUpstream::start(&ca, Verifier::tiktok(TIKTOK_APP_KEY, TIKTOK_APP_SECRET));
        let ledger = Arc::new(Mutex::new(Ledger {
            current: "rt-0".into(),
            lifetime,
            ..Ledger::default()
        }));
        let l = Arc::clone(&ledger);
        upstream.set_handler(move |r: &Received| {
            let mut ledger = l.lock().unwrap();
            if r.path() == "/api/v2/token/refresh" {
                ledger.calls += 1;
                if ledger.hang_next > 0 {
                    ledger.hang_next -= 1;
                    return Some(
                        Behaviour::tiktok_grant("never", "never", 1)
                            .with_delay(Duration::from_secs(60)),
                    );
                }
                let presented = r.query_param("refresh_token").unwrap_or_default();
                if presented != ledger.current {
                    ledger.reused.push(presented);
                    return Some(Behaviour::tiktok_error(
                        200,
                        36004004,
                        "invalid refresh token",
                    ));
                }
                ledger.grants += 1;
                let n = ledger.grants;
                ledger.current = format!("rt-{n}");
                let access = format!("TTP_access_{n}");
                let lifetime = ledger.lifetime;
                ledger.issued.insert(access.clone(), now_secs() + lifetime);
                return Some(Behaviour::tiktok_grant(&access, &ledger.current, lifetime));
            }
            let token = r
                .header_str("x-tts-access-token")
                .unwrap_or_default()
                .to_owned();
            if ledger.rejected.contains(&token) {
                ledger.rejections += 1;
                return Some(Behaviour::tiktok_error(200, 105002, "access token expired"));
            }
            let fresh = ledger
                .issued
                .get(&token)
                .is_some_and(|exp| now_secs() < *exp);
            if !fresh {
                ledger.stale_uses += 1;
            }
            ledger.used.insert(token);
            None
        });
        World {
            ca,
            upstream,
            ledger,
        }
    }

    fn ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.ledger.lock().unwrap())
    }

    fn config(&self, store: &str) -> String {
        let connect_to: Vec<String> = self
            .upstream
            .connect_to_entries()
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"@STATE@\"\n\n\
             [upstream]\nca_file = \"@CA_FILE@\"\nconnect_to = {{ {} }}\nconnect_timeout_ms = 1000\nrequest_timeout_ms = 3000\n\n\
             {store}\n\n\
             [tiktok.default]\napp_key = \"{TIKTOK_APP_KEY}\"\napp_secret = \"{TIKTOK_APP_SECRET}\"\nrefresh_token = \"rt-0\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n",
            connect_to.join(", ")
        )
    }
}

fn redis_store(redis: &Redis) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"test:\"\nconnect_timeout_ms = 500\nresponse_timeout_ms = 500\n",
        redis.url()
    )
}

// ---------------------------------------------------------------------------------------------
// The binary

struct Binary {
    child: Child,
    dir: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn toml_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\")
}

impl Binary {
    /// Writes `config` (with `@STATE@` and `@CA_FILE@`) into `dir` and runs it.
    async fn start(world: &World, dir: &Path, config: &str) -> Binary {
        std::fs::create_dir_all(dir).unwrap();
        let ca_path = world.ca.write_ca_pem(dir);
        let config_path = dir.join("signproxy.toml");
        std::fs::write(
            &config_path,
            config
                .replace("@STATE@", &toml_path(&dir.join("state")))
                .replace("@CA_FILE@", &toml_path(&ca_path)),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_remove("SIGNPROXY_LOG")
            .env_remove("SIGNPROXY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signproxy");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        let line = loop {
            let found = stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("signproxy listening"))
                .cloned();
            if let Some(line) = found {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("signproxy exited ({status}): {:?}", stderr.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "no listening line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Binary {
            child,
            dir: dir.to_path_buf(),
            proxy: v["listen"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            stderr,
        }
    }

    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read_to_string(self.dir.join("state").join("ca-cert.pem")).unwrap();
        reqwest_builder(&pem)
            .proxy(reqwest::Proxy::all(format!("http://{}", self.proxy)).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.admin_get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn get(client: &reqwest::Client) -> (u16, String) {
    let resp = client
        .get(format!("http://{HOST}/api/products"))
        .send()
        .await
        .expect("an answer");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

const REFRESHES_OK: &str =
    "signproxy_token_refreshes_total{profile=\"tiktok.default\",outcome=\"success\"}";

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_refresh_once_per_expiry_and_never_reuse_a_refresh_token() {
    let redis = Redis::start();
    // 6 s tokens: each is refreshed halfway, so 10 s of traffic crosses three refreshes.
    let world = World::new(6);
    let root = tempfile::tempdir().unwrap();
    let config = world.config(&redis_store(&redis));
    let first = Binary::start(&world, &root.path().join("a"), &config).await;
    first.wait_ready().await;
    let mut replicas = vec![first];
    for name in ["b", "c"] {
        replicas.push(Binary::start(&world, &root.path().join(name), &config).await);
    }
    for r in &replicas {
        r.wait_ready().await;
    }
    assert_eq!(
        world.ledger(|l| l.grants),
        1,
        "the later replicas took the stored token"
    );

    let clients: Vec<reqwest::Client> = replicas.iter().map(Binary::client).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let client = clients[i % 3].clone();
        // 20 waves of 10 requests, half a second apart.
        let at = Duration::from_millis(500 * (i / 10) as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            get(&client).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (grants, reused, stale, used, calls) = world.ledger(|l| {
        (
            l.grants,
            l.reused.clone(),
            l.stale_uses,
            l.used.len(),
            l.calls,
        )
    });
    assert!(reused.is_empty(), "refresh tokens reused: {reused:?}");
    assert_eq!(
        calls, grants,
        "every call to the token endpoint was a grant"
    );
    assert_eq!(stale, 0, "no request carried an expired token");
    // One refresh per half lifetime (3 s) across all replicas, plus the first grant.
    let most = 1 + (elapsed / 3.0).ceil() as usize + 1;
    assert!(
        (3..=most).contains(&grants),
        "{grants} grants in {elapsed:.1} s (at most {most})"
    );
    assert!(
        used >= 3,
        "the traffic crossed expiries: {used} tokens used"
    );
    let mut refreshed = 0.0;
    for r in &replicas {
        refreshed += r.metric(REFRESHES_OK).await;
    }
    assert_eq!(
        refreshed as usize, grants,
        "each grant was one replica's refresh"
    );
    let mut adopted = 0.0;
    for r in &replicas {
        adopted += r
            .metric("signproxy_token_adoptions_total{profile=\"tiktok.default\"}")
            .await;
    }
    assert!(
        adopted >= 2.0,
        "replicas took each other's tokens: {adopted}"
    );
    for r in &replicas {
        assert!(!r.output().contains("rt-"), "a refresh token in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_the_valid_token_then_503_naming_the_store_and_recovers() {
    let mut redis = Redis::start();
    let world = World::new(4);
    let root = tempfile::tempdir().unwrap();
    let bin = Binary::start(&world, root.path(), &world.config(&redis_store(&redis))).await;
    bin.wait_ready().await;
    let client = bin.client();
    assert_eq!(get(&client).await.0, 200);

    redis.stop();
    let grants = world.ledger(|l| l.grants);
    // While its token lasts, the replica keeps serving.
    let (status, body) = get(&client).await;
    assert_eq!(status, 200, "{body}");
    // Once it expires: no refresh without the lease; 503 naming the store; not ready.
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = get(&client).await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never 503");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains("token_unavailable"), "{body}");
    assert!(
        body.contains(&format!("redis redis://127.0.0.1:{}/0", redis.port)),
        "{body}"
    );
    let (status, ready) = bin.admin_get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("redis"), "{ready}");
    assert_eq!(
        world.ledger(|l| l.grants),
        grants,
        "no refresh without the store"
    );
    assert!(
        bin.metric("signproxy_token_store_errors_total{operation=\"load\"}")
            .await
            >= 1.0
    );

    // Back (empty: no persistence): the replica refreshes with the refresh token it holds.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(&client).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bin.wait_ready().await;
    assert!(world.ledger(|l| l.reused.is_empty()));
    assert!(
        redis.exists("test:tiktok.default"),
        "the new pair is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_lease_is_taken_over_once_the_lease_ends() {
    let redis = Redis::start();
    let world = World::new(3600);
    world.ledger.lock().unwrap().hang_next = 1;
    let root = tempfile::tempdir().unwrap();
    let config = world.config(&redis_store(&redis));
    let mut holder = Binary::start(&world, &root.path().join("a"), &config).await;
    let deadline = Instant::now() + WAIT;
    while world.ledger(|l| l.calls) == 0 {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        redis.exists("test:tiktok.default:lease"),
        "the lease is held"
    );
    holder.kill();
    let killed_at = Instant::now();

    let other = Binary::start(&world, &root.path().join("b"), &config).await;
    let (status, body) = get(&other.client()).await;
    assert_eq!(status, 200, "{body}\n{}", other.output());
    // The lease lasts the token endpoint's timeout (1 s connect + 3 s request).
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "answered before the lease ended"
    );
    assert_eq!(world.ledger(|l| l.grants), 1);
    assert!(world.ledger(|l| l.reused.is_empty()));
    assert!(
        other
            .metric("signproxy_token_lease_waits_total{profile=\"tiktok.default\"}")
            .await
            >= 1.0
    );
    assert!(!redis.exists("test:tiktok.default:lease"), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_moves_the_token_file_into_redis() {
    let redis = Redis::start();
    let world = World::new(3600);
    let root = tempfile::tempdir().unwrap();
    // One replica on the file store obtains and persists a pair.
    let mut file_bin = Binary::start(&world, root.path(), &world.config("")).await;
    file_bin.wait_ready().await;
    file_bin.kill();
    assert_eq!(world.ledger(|l| l.grants), 1);

    let config = world.config(&redis_store(&redis));
    let ca_path = world.ca.write_ca_pem(root.path());
    std::fs::write(
        root.path().join("signproxy.toml"),
        config
            .replace("@STATE@", &toml_path(&root.path().join("state")))
            .replace("@CA_FILE@", &toml_path(&ca_path)),
    )
    .unwrap();
    let migrate = || {
        Command::new(BIN)
            .args([
                "store", "migrate", "--from", "file", "--to", "redis", "--config",
            ])
            .arg(root.path().join("signproxy.toml"))
            .output()
            .unwrap()
    };
    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tiktok.default: moved"), "{stdout}");
    assert!(
        !stdout.contains("TTP_access") && !stdout.contains("rt-1"),
        "{stdout}"
    );
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(root.path().join("signproxy.toml"))
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(
        checked.contains(&format!(
            "token store: redis redis://127.0.0.1:{}/0 (key prefix \"test:\")",
            redis.port
        )),
        "{checked}"
    );
    let again = migrate();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains("tiktok.default: already in redis"),
        "{stdout}"
    );

    // A replica on Redis (another folder: no file to fall back on) uses the migrated pair.
    let bin = Binary::start(&world, &root.path().join("other"), &config).await;
    bin.wait_ready().await;
    assert_eq!(get(&bin.client()).await.0, 200);
    assert_eq!(
        world.ledger(|l| l.grants),
        1,
        "no new grant: the migrated token was used"
    );
    assert!(world.ledger(|l| l.used.contains("TTP_access_1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_answer_on_one_replica_invalidates_the_token_for_all() {
    let redis = Redis::start();
    let world = World::new(3600);
    let root = tempfile::tempdir().unwrap();
    let config = world.config(&redis_store(&redis));
    let a = Binary::start(&world, &root.path().join("a"), &config).await;
    a.wait_ready().await;
    let b = Binary::start(&world, &root.path().join("b"), &config).await;
    b.wait_ready().await;
    let (a_client, b_client) = (a.client(), b.client());
    assert_eq!(get(&b_client).await.0, 200);
    assert_eq!(world.ledger(|l| l.grants), 1);

    world
        .ledger
        .lock()
        .unwrap()
        .rejected
        .insert("TTP_access_1".into());
    let (status, body) = get(&a_client).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.ledger(|l| (l.grants, l.rejections)), (2, 1));
    // B checks its cached token against Redis at most a second later: it never sends the dead one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let (status, body) = get(&b_client).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        world.ledger(|l| (l.grants, l.rejections)),
        (2, 1),
        "B used the new token without being told it expired"
    );
    assert!(world.ledger(|l| l.reused.is_empty()));
}

/// The store itself against a real Redis, as the README's ACL user: a write against an old
/// version is refused (a lost lease never overwrites a newer pair), and a release frees only
/// its holder's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_is_refused_and_a_release_frees_only_its_own_lease() {
    use signproxy::token::backend::Store as _;
    use signproxy::token::store::StoredProfile;
    let redis = Redis::start();
    // The ACL user the README recommends: only the prefix, only the commands signproxy sends.
    let acl = [
        "ACL",
        "SETUSER",
        "signproxy",
        "on",
        ">s3cret-pw",
        "~signproxy:*",
        "+@connection",
        "+hgetall",
        "+hget",
        "+hset",
        "+hdel",
        "+get",
        "+set",
        "+del",
        "+eval",
        "+evalsha",
        "+script|load",
    ];
    redis.query(&acl).unwrap();
    let settings = signproxy::config::RedisSettings {
        url: signproxy::secret::Secret::new(format!(
            "redis://signproxy:s3cret-pw@127.0.0.1:{}/0",
            redis.port
        )),
        key_prefix: "signproxy:".into(),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
    };
    let store = signproxy::token::redis_store::RedisStore::new(&settings).unwrap();
    let pair = |rt: &str| StoredProfile {
        seed: "seed".into(),
        access_token: Some(format!("at-{rt}")),
        expires_at: Some(2_000_000_000),
        obtained_at: Some(1_000),
        refresh_token: Some(rt.into()),
        refresh_expires_at: None,
    };
    assert_eq!(store.load("p").await.unwrap().version, 0);
    assert_eq!(store.put("p", 0, pair("rt-1")).await.unwrap(), Some(1));
    assert_eq!(store.put("p", 1, pair("rt-2")).await.unwrap(), Some(2));
    // A replica that refreshed from version 1 (its lease ran out meanwhile) is refused.
    assert_eq!(store.put("p", 1, pair("rt-stale")).await.unwrap(), None);
    let loaded = store.load("p").await.unwrap();
    assert_eq!(loaded.version, 2);
    assert_eq!(
        loaded.profile.unwrap().refresh_token.as_deref(),
        Some("rt-2")
    );

    let lease = store
        .acquire("p", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .acquire("p", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = store
        .acquire("p", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    // The first holder, late, must not free the second's lease.
    store.release(&lease).await.unwrap();
    assert!(
        redis.exists("signproxy:p:lease"),
        "the late release freed another's lease"
    );
    store.release(&next).await.unwrap();
    assert!(!redis.exists("signproxy:p:lease"));

    // Invalidation drops only the named access token, keeping the version and refresh token.
    store.invalidate("p", "at-other").await.unwrap();
    assert!(store
        .load("p")
        .await
        .unwrap()
        .profile
        .unwrap()
        .access_token
        .is_some());
    store.invalidate("p", "at-rt-2").await.unwrap();
    let loaded = store.load("p").await.unwrap();
    assert_eq!(loaded.version, 2);
    let stored = loaded.profile.unwrap();
    assert_eq!(stored.access_token, None);
    assert_eq!(stored.refresh_token.as_deref(), Some("rt-2"));

    // Inbound replay marks stay within the same prefix and commands.
    use signproxy::token::redis_replay::ReplayBegin;
    let ttl = Duration::from_secs(5);
    let ReplayBegin::New { claim } = store.replay_begin("shop.a", "e1", ttl).await.unwrap() else {
        panic!("a new id is claimed")
    };
    assert_eq!(
        store.replay_begin("shop.a", "e1", ttl).await.unwrap(),
        ReplayBegin::InFlight
    );
    // Another claim's settle never frees this one's mark.
    store
        .replay_abandon("shop.a", "e1", "not-ours")
        .await
        .unwrap();
    assert_eq!(
        store.replay_begin("shop.a", "e1", ttl).await.unwrap(),
        ReplayBegin::InFlight
    );
    store.replay_abandon("shop.a", "e1", &claim).await.unwrap();
    let ReplayBegin::New { claim } = store.replay_begin("shop.a", "e1", ttl).await.unwrap() else {
        panic!("released")
    };
    store
        .replay_accept("shop.a", "e1", &claim, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.replay_begin("shop.a", "e1", ttl).await.unwrap(),
        ReplayBegin::Accepted
    );
    // Per profile: the same id of another profile is another event.
    assert!(matches!(
        store.replay_begin("shop.b", "e1", ttl).await.unwrap(),
        ReplayBegin::New { .. }
    ));

    // Outside the prefix the ACL refuses: the limit is real, and the error hides the password.
    let outside = signproxy::config::RedisSettings {
        key_prefix: "other:".into(),
        ..settings
    };
    let refused = signproxy::token::redis_store::RedisStore::new(&outside).unwrap();
    let e = refused
        .load("p")
        .await
        .err()
        .expect("refused by the ACL")
        .to_string();
    assert!(e.contains("NOPERM") || e.contains("permission"), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Inbound webhooks: replicas de-duplicate through the same Redis

const INBOUND: &str = "\n[inbound.hooks]\nlisten = \"127.0.0.1:0\"\nforward_to = \"@APP@\"\n\n\
                       [[inbound.hooks.routes]]\npath = \"/webhooks/tiktok\"\nprofile = \"tiktok.default\"\n";

/// The replicas' config with an inbound listener forwarding to `app`. `managed`: whether the
/// profile has managed tokens (then the token manager's Redis connection is the one shared).
fn inbound_config(world: &World, redis: &Redis, app: &TestUpstream, managed: bool) -> String {
    let config = world.config(&redis_store(redis)) + &INBOUND.replace("@APP@", &app.url("/"));
    if managed {
        config
    } else {
        config.replace("refresh_token = \"rt-0\"\n", "")
    }
}

/// A TikTok push with `id`, signed as TikTok does (hex HMAC-SHA256(app_secret, app_key ‖ body)),
/// computed here, not by signproxy.
fn tiktok_event(id: &str) -> (Vec<u8>, String) {
    use hmac::{Hmac, Mac};
    let body = format!(
        r#"{{"type":1,"tts_notification_id":"{id}","shop_id":"7495540735365777507","timestamp":1718305585,"data":{{"order_id":"576653688135258178","order_status":"UNPAID"}}}}"#
    )
    .into_bytes();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(TIKTOK_APP_SECRET.as_bytes()).unwrap();
    mac.update(TIKTOK_APP_KEY.as_bytes());
    mac.update(&body);
    (body, hex::encode(mac.finalize().into_bytes()))
}

impl Binary {
    /// The inbound listener's address, from its "inbound webhooks listening" line.
    async fn inbound(&self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("inbound webhooks listening"))
                .cloned();
            if let Some(line) = found {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["dedupe"], "redis", "{line}");
                return v["listen"].as_str().unwrap().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no inbound line: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn push(&self, id: &str) -> u16 {
        let (body, signature) = tiktok_event(id);
        let addr = self.inbound().await;
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
            .post(format!("http://{addr}/webhooks/tiktok"))
            .header("content-type", "application/json")
            .header("authorization", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn inbound_metric(&self, outcome: &str) -> f64 {
        self.metric(&format!(
            "signproxy_inbound_webhooks_total{{listener=\"hooks\",profile=\"tiktok.default\",outcome=\"{outcome}\"}}"
        ))
        .await
    }
}

/// Event ids the app received (what signproxy says it verified).
fn delivered(app: &TestUpstream) -> Vec<String> {
    app.requests()
        .iter()
        .map(|r| r.header_str("x-signproxy-event-id").unwrap().to_owned())
        .collect()
}

fn replay_key(id: &str, which: &str) -> String {
    use sha2::Digest;
    format!(
        "test:inbound:tiktok.default:{}:{which}",
        hex::encode(sha2::Sha256::digest(id.as_bytes()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_through_one_replica_is_a_duplicate_on_another_and_after_a_restart() {
    let redis = Redis::start();
    let world = World::new(3600);
    let app = TestUpstream::start_plain(Verifier::None);
    let root = tempfile::tempdir().unwrap();
    let config = inbound_config(&world, &redis, &app, true);
    let mut a = Binary::start(&world, &root.path().join("a"), &config).await;
    let mut b = Binary::start(&world, &root.path().join("b"), &config).await;

    assert_eq!(a.push("7380066284010030890").await, 200);
    assert_eq!(delivered(&app), ["7380066284010030890"]);
    // The replay through the other replica: acknowledged as TikTok expects, never forwarded.
    assert_eq!(b.push("7380066284010030890").await, 200);
    assert_eq!(b.push("7380066284010030890").await, 200);
    assert_eq!(
        delivered(&app),
        ["7380066284010030890"],
        "a replay reached the app"
    );
    assert_eq!(a.inbound_metric("forwarded").await, 1.0);
    assert_eq!(b.inbound_metric("duplicate").await, 2.0);
    assert_eq!(b.inbound_metric("forwarded").await, 0.0);

    // One accepted mark, kept a day (the default retention); the in-flight mark is gone.
    assert!(redis.exists(&replay_key("7380066284010030890", "accepted")));
    assert!(!redis.exists(&replay_key("7380066284010030890", "inflight")));
    let Ok(redis::Value::Int(ttl)) =
        redis.query(&["PTTL", &replay_key("7380066284010030890", "accepted")])
    else {
        panic!("no PTTL")
    };
    assert!(
        (86_400_000 - 60_000..=86_400_000).contains(&ttl),
        "retention {ttl} ms"
    );

    // Every process gone; a new one on the same Redis still refuses the replay. It holds no
    // managed token, so it opens its own connection for de-duplication.
    a.kill();
    b.kill();
    let c = Binary::start(
        &world,
        &root.path().join("c"),
        &inbound_config(&world, &redis, &app, false),
    )
    .await;
    assert_eq!(c.push("7380066284010030890").await, 200);
    assert_eq!(
        delivered(&app),
        ["7380066284010030890"],
        "a replay after a restart"
    );
    assert_eq!(c.inbound_metric("duplicate").await, 1.0);
    // A new event still goes through.
    assert_eq!(c.push("7380066284010030891").await, 200);
    assert_eq!(
        delivered(&app),
        ["7380066284010030890", "7380066284010030891"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_app_refused_is_delivered_again_through_the_other_replica() {
    let redis = Redis::start();
    let world = World::new(3600);
    let app = TestUpstream::start_plain(Verifier::None);
    let root = tempfile::tempdir().unwrap();
    let config = inbound_config(&world, &redis, &app, true);
    let a = Binary::start(&world, &root.path().join("a"), &config).await;
    let b = Binary::start(&world, &root.path().join("b"), &config).await;

    app.set_behaviour(Behaviour::json(500, r#"{"error":"busy"}"#));
    assert_eq!(a.push("refused-1").await, 500);
    assert_eq!(a.inbound_metric("app_refused").await, 1.0);
    assert!(!redis.exists(&replay_key("refused-1", "accepted")));
    assert!(!redis.exists(&replay_key("refused-1", "inflight")));

    // TikTok's retry lands on the other replica and reaches the app.
    app.set_behaviour(Behaviour::echo());
    assert_eq!(b.push("refused-1").await, 200);
    assert_eq!(delivered(&app), ["refused-1", "refused-1"]);
    assert_eq!(b.inbound_metric("forwarded").await, 1.0);
    // Accepted now: the next copy, on either replica, is a duplicate.
    assert_eq!(a.push("refused-1").await, 200);
    assert_eq!(b.push("refused-1").await, 200);
    assert_eq!(delivered(&app).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_while_another_replica_has_the_event_with_the_app_gets_503() {
    let redis = Redis::start();
    let world = World::new(3600);
    let app = TestUpstream::start_plain(Verifier::None);
    let root = tempfile::tempdir().unwrap();
    let config = inbound_config(&world, &redis, &app, true);
    let a = Arc::new(Binary::start(&world, &root.path().join("a"), &config).await);
    let b = Binary::start(&world, &root.path().join("b"), &config).await;
    a.inbound().await;

    app.set_behaviour(Behaviour::echo().with_delay(Duration::from_millis(1500)));
    let first = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.push("slow-1").await })
    };
    let deadline = Instant::now() + WAIT;
    while app.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first copy never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis.exists(&replay_key("slow-1", "inflight")));
    assert_eq!(
        b.push("slow-1").await,
        503,
        "the second copy must be retried later"
    );
    assert_eq!(b.inbound_metric("in_flight").await, 1.0);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(b.push("slow-1").await, 200);
    assert_eq!(b.inbound_metric("duplicate").await, 1.0);
    assert_eq!(delivered(&app), ["slow-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_with_503_and_the_retry_is_delivered_once_it_is_back() {
    let mut redis = Redis::start();
    let world = World::new(3600);
    let app = TestUpstream::start_plain(Verifier::None);
    let root = tempfile::tempdir().unwrap();
    let a = Binary::start(
        &world,
        root.path(),
        &inbound_config(&world, &redis, &app, false),
    )
    .await;
    assert_eq!(a.push("before-1").await, 200);

    redis.stop();
    // Nothing can tell whether the app has it: never forwarded, never acknowledged.
    assert_eq!(a.push("during-1").await, 503);
    assert_eq!(a.push("during-1").await, 503);
    assert_eq!(delivered(&app), ["before-1"]);
    assert_eq!(a.inbound_metric("dedupe_unavailable").await, 2.0);
    // What this process accepted itself is still refused without Redis.
    assert_eq!(a.push("before-1").await, 200);
    assert_eq!(a.inbound_metric("duplicate").await, 1.0);
    let output = a.output();
    assert!(
        output.contains("cannot check the event id in the shared store"),
        "{output}"
    );
    assert!(!output.contains(TIKTOK_APP_SECRET), "a secret in the log");

    // Back (empty): the marketplace's retry is delivered, once.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = a.push("during-1").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.push("during-1").await, 200);
    assert_eq!(delivered(&app), ["before-1", "during-1"]);
}
