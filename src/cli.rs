//! The `signproxy` command line: `run`, `check`, `sign`, `doctor`, `sandbox`, `ca` and `health`
//! (see the CLI contract in README.md).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::{self, Config};
use crate::egress::EgressPolicy;
use crate::marketplace::tool::ToolContext;
use crate::marketplace::{sign_explained, Marketplace, SignInput, MARKETPLACES};
use crate::metrics::{Metrics, Outcome};
use crate::proxy::Proxy;
use crate::request::prepare_head;
use crate::route::{
    named_port, normalize_host, route, signed_port, Destination, Route, RouteError,
};
use crate::sandbox::Sandbox;
use crate::secret::Secret;
use crate::signing::https_authority;
use crate::token::store::TokenStore;
use crate::token::TokenSource;
use crate::upstream::Upstream;

#[derive(Parser, Debug)]
#[command(
    name = "signproxy",
    version,
    about = "A local signing forward proxy for marketplace APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the proxy.
    Run {
        /// Config file (default: $SIGNPROXY_CONFIG, else ./signproxy.toml, else config/signproxy.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Answer every marketplace host with the built-in stand-ins instead of the network
        /// (as `[sandbox] enabled = true`): offline, nothing signed leaves this machine.
        #[arg(long)]
        sandbox: bool,
    },
    /// The built-in marketplace stand-ins on their own.
    Sandbox {
        #[command(subcommand)]
        action: SandboxAction,
    },
    /// Validate the config and print the routes.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage the local CA used for HTTPS interception.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Print a request exactly as signproxy would send it upstream.
    Sign(SignArgs),
    /// Check the signature on a request your own code signed, and name the mistake if it is
    /// wrong. Exit 0 when it is right, 1 when it is not.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The profile to check against (default: the one serving the request's host).
        #[arg(long)]
        profile: Option<String>,
        /// The time to judge the timestamp against (Unix seconds; default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Print JSON for tools instead of text for people.
        #[arg(long)]
        json: bool,
        /// With METHOD URL: a request header as your code sent it, signature headers included.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// With METHOD URL: the body as sent.
        #[arg(short = 'd', long = "data", conflicts_with = "data_file")]
        data: Option<String>,
        /// With METHOD URL: read the body as sent from this file.
        #[arg(long = "data-file")]
        data_file: Option<PathBuf>,
        /// A file with the raw HTTP request (request line, headers, blank line, body), `-` for
        /// stdin; or METHOD URL (the URL with your code's query, `sign` included) and -H/-d.
        #[arg(required = true, num_args = 1..=2)]
        request: Vec<String>,
    },
    /// Manage the token store ([store] in the config).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Inbound webhooks: test events against an `[inbound.NAME]` listener.
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Probe a running signproxy's admin port (for container health checks): exit 0 when ready.
    Health {
        /// Config file whose [admin] listen to probe (same default as `run`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Probe this admin address instead, e.g. 127.0.0.1:9090.
        #[arg(long)]
        addr: Option<String>,
        /// Only check that the process answers (/healthz), not that it is ready (/readyz).
        #[arg(long)]
        live: bool,
    },
}

#[derive(Subcommand, Debug)]
enum StoreAction {
    /// Copy every profile's tokens from the state folder's tokens.json into the Redis store the
    /// config's [store] names. Profiles Redis already holds are left alone (say so). Run it once,
    /// before the first replica starts with backend = "redis".
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the tokens are now: file.
        #[arg(long, value_parser = ["file"])]
        from: String,
        /// Where they go: redis.
        #[arg(long, value_parser = ["redis"])]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
enum WebhookAction {
    /// Send a test event signed as the profile's marketplace signs it to the listener whose
    /// route uses the profile, and print the answer (eBay: the endpoint challenge).
    Send {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The profile whose route receives it (`tiktok.default`, or `default` when unique).
        #[arg(long)]
        profile: String,
        /// The event type: TikTok's name (ORDER_STATUS_CHANGE) or number, Shopee's push code.
        #[arg(long = "type", default_value = "1")]
        event_type: String,
        /// Spoil the signature: the listener must refuse it.
        #[arg(long, conflicts_with = "replay")]
        forged: bool,
        /// Send the same event twice: the second must be acknowledged without reaching the app.
        #[arg(long)]
        replay: bool,
        /// Send to this base URL instead of the listener's address (e.g. your ingress).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SandboxAction {
    /// Serve the stand-ins over HTTPS (certificates from the local CA) for code that signs by
    /// itself: they verify with the config's credentials and answer as the marketplace would.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here instead of [sandbox] listen (default 127.0.0.1:8443).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand, Debug)]
enum CaAction {
    /// Create the CA at [mitm] ca_cert/ca_key (default: under [proxy] state_dir), limited to
    /// the profiles' hosts.
    Init {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replace an existing CA (clients must then trust the new certificate).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for clients to trust, creating the CA if needed.
    Cert {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The command line: the built-in commands plus each marketplace's own
/// (`signproxy ebay create-key`), which the marketplace's folder defines.
pub fn command() -> clap::Command {
    let mut cli = Cli::command();
    for marketplace in MARKETPLACES {
        let tools = marketplace.tools();
        if tools.is_empty() {
            continue;
        }
        let id = marketplace.id();
        let mut group = clap::Command::new(id)
            .about(format!("Commands for [{id}.NAME] profiles"))
            .subcommand_required(true)
            .arg_required_else_help(true);
        for tool in tools {
            group = group.subcommand(
                tool.command()
                    .arg(
                        clap::Arg::new("config")
                            .long("config")
                            .value_parser(clap::value_parser!(PathBuf))
                            .help("Config file (same default as `run`)"),
                    )
                    .arg(
                        clap::Arg::new("profile")
                            .long("profile")
                            .required(true)
                            .help(format!("The profile: NAME of [{id}.NAME]")),
                    )
                    .arg(
                        clap::Arg::new("sandbox")
                            .long("sandbox")
                            .action(clap::ArgAction::SetTrue)
                            .help(
                                "Talk to the built-in stand-in instead of the marketplace (as \
                                 [sandbox] enabled = true)",
                            ),
                    ),
            );
        }
        cli = cli.subcommand(group);
    }
    cli
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let matches = command().get_matches();
    if let Some((id, args)) = matches.subcommand() {
        if let Some(marketplace) = crate::marketplace::by_id(id) {
            return exit_code(marketplace_tool(marketplace, args));
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run { config, sandbox } => run(config, sandbox),
        Command::Sandbox {
            action: SandboxAction::Serve { config, listen },
        } => sandbox_serve(config, listen),
        Command::Check { config } => check(config),
        Command::Ca { action } => ca(action),
        Command::Sign(args) => sign(args),
        Command::Health { config, addr, live } => health(config, addr, live),
        Command::Store {
            action: StoreAction::Migrate { config, .. },
        } => store_migrate(config),
        Command::Webhook {
            action:
                WebhookAction::Send {
                    config,
                    profile,
                    event_type,
                    forged,
                    replay,
                    url,
                },
        } => webhook_send(config, &profile, &event_type, forged, replay, url),
        Command::Doctor {
            config,
            profile,
            now,
            json,
            headers,
            data,
            data_file,
            request,
        } => match crate::doctor::read_input(&request, &headers, data, data_file).and_then(|raw| {
            let config = load(config)?;
            crate::doctor::run(&config, &raw, profile.as_deref(), now, json)
        }) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::from(1),
            Err(message) => Err(message),
        },
    };
    exit_code(result)
}

fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// `signproxy <marketplace> <command> --profile NAME`: the marketplace's command, given the
/// profile, the state folder and the upstream client.
fn marketplace_tool(
    marketplace: &'static dyn Marketplace,
    matches: &clap::ArgMatches,
) -> Result<(), String> {
    let id = marketplace.id();
    let (name, args) = matches
        .subcommand()
        .ok_or_else(|| format!("name a command: `signproxy {id} --help` lists them"))?;
    let tool = marketplace
        .tools()
        .iter()
        .find(|t| t.command().get_name() == name)
        .ok_or_else(|| format!("`signproxy {id}` has no command `{name}`"))?;
    let config = load(args.get_one::<PathBuf>("config").cloned())?;
    let wanted = args
        .get_one::<String>("profile")
        .map(String::as_str)
        .unwrap_or_default();
    let profile = config
        .profiles
        .iter()
        .find(|p| p.kind == id && (p.name == wanted || p.qualified_name() == wanted))
        .ok_or_else(|| {
            let table = wanted.strip_prefix(&format!("{id}.")).unwrap_or(wanted);
            format!(
                "no [{id}.{table}] profile in {}: add one (the command uses its credentials)",
                config.source.display()
            )
        })?;
    create_state_dir(&config)?;
    let egress = EgressPolicy {
        allow_networks: config.proxy.allow_networks.clone(),
        own_addresses: std::iter::once(config.proxy.listen)
            .chain(config.admin.listen)
            .collect(),
    };
    let mut upstream = Upstream::new(&config.upstream, egress, 1).map_err(|e| e.to_string())?;
    if args.get_flag("sandbox") || config.sandbox.enabled {
        // Only this profile's stand-in answers: of several serving a host, the first would.
        let mut only = load(args.get_one::<PathBuf>("config").cloned())?;
        only.profiles
            .retain(|p| p.kind == id && p.name == profile.name);
        let sandbox = Sandbox::new(Arc::new(only), crate::clock::system(), Arc::default());
        upstream = upstream.with_sandbox(Arc::new(sandbox));
    }
    let hosts: Vec<String> = profile.hosts.iter().map(|h| h.to_string()).collect();
    let qualified = profile.qualified_name();
    let cx = ToolContext {
        profile: &qualified,
        name: &profile.name,
        hosts: &hosts,
        token: &profile.token,
        state_dir: &config.proxy.state_dir,
        now: SystemClock.now(),
        upstream: &upstream,
    };
    let out = runtime()?.block_on(tool.run(args, cx))?;
    print!("{out}");
    Ok(())
}

/// `webhook send`: a test event through the listener whose route uses `profile`.
fn webhook_send(
    flag: Option<PathBuf>,
    profile: &str,
    event_type: &str,
    forged: bool,
    replay: bool,
    url: Option<String>,
) -> Result<(), String> {
    let config = load(flag)?;
    let routes: Vec<_> = config
        .inbound
        .iter()
        .flat_map(|i| i.routes.iter().map(move |r| (i, r)))
        .filter(|(_, r)| r.profile.qualified_name() == profile || r.profile.name == profile)
        .collect();
    let (inbound, route) = match routes.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "no [[inbound.NAME.routes]] uses the profile `{profile}`: add a route for it"
            ))
        }
        _ => {
            return Err(format!(
                "several inbound routes use the profile `{profile}`: name it as KIND.NAME or keep one route per profile"
            ))
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?;
    let unique = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
    let event = route
        .verifier
        .test_event(event_type, unique, now.as_secs(), forged)?;
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let mut addr = inbound.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let target = match &event.query {
        Some(q) => format!("{base}{}?{q}", route.path),
        None => format!("{base}{}", route.path),
    };
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("`{target}` is not a URL"))?;
    let times = if replay { 2 } else { 1 };
    runtime()?.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        for attempt in 1..=times {
            let mut request = http::Request::new(http_body_util::Full::new(bytes::Bytes::from(
                event.body.clone(),
            )));
            *request.method_mut() = event.method.clone();
            *request.uri_mut() = uri.clone();
            for (name, value) in &event.headers {
                let name = http::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("bad header name {name}"))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|_| "bad header value".to_owned())?;
                request.headers_mut().insert(name, value);
            }
            let response =
                tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
                    .await
                    .map_err(|_| format!("{target} did not answer within 30 s"))?
                    .map_err(|e| format!("cannot reach {target}: {e} (is `signproxy run` up?)"))?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            let what = match (forged, attempt) {
                (true, _) => "forged event",
                (false, 2) => "replayed event",
                (false, _) => "event",
            };
            println!(
                "{what} {} {target} -> {} {}",
                event.method,
                status.as_u16(),
                String::from_utf8_lossy(&body)
            );
        }
        Ok::<(), String>(())
    })
}

fn load(flag: Option<PathBuf>) -> Result<Config, String> {
    Config::load(&config::resolve_path(flag.as_deref())).map_err(|e| e.to_string())
}

/// The config for `run`: `--sandbox` holds for every reload too.
fn load_for_run(path: &std::path::Path, sandbox: bool) -> Result<Config, String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    config.sandbox.enabled |= sandbox;
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(flag: Option<PathBuf>, sandbox: bool) -> Result<(), String> {
    let path = config::resolve_path(flag.as_deref());
    let config = Arc::new(load_for_run(&path, sandbox)?);
    crate::logging::init(&config.log);
    // The proxy port is served by its own worker threads (`[proxy] workers`); this runtime only
    // runs the control plane: signals, reloads, the admin port, token prefetch.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("signproxy-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    control.block_on(serve(path, config, sandbox))
}

fn create_state_dir(config: &Config) -> Result<(), String> {
    let state_dir = &config.proxy.state_dir;
    crate::state_dir::create_private_dir(state_dir).map_err(|e| {
        format!(
            "cannot create the state folder {} ({e}): create it, or set [proxy] state_dir",
            state_dir.display()
        )
    })
}

async fn serve(path: PathBuf, config: Arc<Config>, sandbox_flag: bool) -> Result<(), String> {
    create_state_dir(&config)?;
    let workers = config.proxy.workers;
    let listeners = crate::proxy::workers::bind(config.proxy.listen, workers)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} ({e}): change [proxy] listen",
                config.proxy.listen
            )
        })?;
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(bind(addr, "admin.listen").await?),
        None => None,
    };
    let listen_addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(config.proxy.listen);
    let own_addresses = std::iter::once(listen_addr)
        .chain(admin_listener.as_ref().and_then(|l| l.local_addr().ok()))
        .collect();
    let proxy = Proxy::new(Arc::clone(&config), Arc::new(Metrics::new()), own_addresses)
        .map_err(|e| e.to_string())?;
    // Filled as the inbound listeners start; a reload hands each its new settings.
    let inbound_running: InboundListeners = Arc::default();
    // Before the listening line: whoever waits for it may send SIGHUP at once.
    tokio::spawn(reload_on_sighup(
        proxy.clone(),
        path,
        sandbox_flag,
        Arc::clone(&inbound_running),
    ));
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        listen = %listen_addr,
        workers = listeners.len(),
        admin = %admin_listener.as_ref().map(local).unwrap_or_else(|| "off".to_owned()),
        config = %config.source.display(),
        ca_cert = %config.mitm.ca_cert.display(),
        "signproxy listening"
    );
    tracing::info!("{}", access_line(&config));
    tracing::info!("{}", store_line(&config));
    for line in route_lines(&config) {
        tracing::info!("route {line}");
    }
    if config.sandbox.enabled {
        tracing::warn!("{SANDBOX_LINE}");
    }
    let (stopped_tx, stopped_rx) = watch::channel(false);
    if let Some(listener) = admin_listener {
        let mut stopped = stopped_rx.clone();
        tokio::spawn(crate::admin::serve(listener, proxy.clone(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let shared_dedupe = shared_dedupe_store(&config, &proxy)?;
    for settings in &config.inbound {
        let listener = bind(
            settings.listen,
            &format!("inbound.{}.listen", settings.name),
        )
        .await?;
        let keys = Arc::new(crate::inbound::KeyCache::new(
            Arc::new(crate::inbound::keys::ProxyKeyFetch {
                proxy: proxy.clone(),
            }),
            crate::inbound::keys::KEY_TTL,
        ));
        let inbound = crate::inbound::Inbound::new(
            Arc::new(settings.clone()),
            Arc::clone(proxy.metrics()),
            &config.upstream.extra_roots,
            Some(keys),
        )
        .map_err(|e| e.to_string())?;
        let inbound = match &shared_dedupe {
            Some(store) => inbound.with_shared_dedupe(Arc::clone(store)),
            None => inbound,
        };
        tracing::info!(
            listener = %settings.name,
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            routes = settings.routes.len(),
            dedupe = inbound.dedupe_backend(),
            "inbound webhooks listening"
        );
        let inbound = Arc::new(inbound);
        match inbound_running.lock() {
            Ok(mut running) => running.push(Arc::clone(&inbound)),
            Err(poisoned) => poisoned.into_inner().push(Arc::clone(&inbound)),
        }
        // A SIGHUP may have come between the start and this registration: catch up with it.
        let current = proxy.state().config.clone();
        if let Some(now) = current.inbound.iter().find(|i| i.name == settings.name) {
            for note in inbound.reload(Arc::new(now.clone())) {
                tracing::warn!("{note}");
            }
        }
        let mut stopped = stopped_rx.clone();
        tokio::spawn(crate::inbound::serve(listener, inbound, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    tokio::spawn(obtain_missing_tokens(proxy.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let served = crate::proxy::workers::serve(proxy.clone(), listeners, stop_rx).await;
    let _ = stopped_tx.send(true);
    served.map_err(|e| e.to_string())?;
    tracing::info!("signproxy stopped");
    Ok(())
}

/// The Redis store inbound listeners de-duplicate through, when `[store]` is shared: the token
/// manager's own (one connection), else one opened for them. Never in the sandbox, whose test
/// events must not mark the marketplace's real ids as seen.
fn shared_dedupe_store(
    config: &Config,
    proxy: &Proxy,
) -> Result<Option<Arc<crate::token::redis_store::RedisStore>>, String> {
    let crate::config::StoreSettings::Redis(settings) = &config.store else {
        return Ok(None);
    };
    if config.inbound.is_empty() || config.sandbox.enabled {
        return Ok(None);
    }
    if let Some(store) = proxy.state().tokens.shared_redis() {
        return Ok(Some(store));
    }
    let store = crate::token::redis_store::RedisStore::new(settings)
        .map(Arc::new)
        .map_err(|e| e.to_string())?;
    let warming = Arc::clone(&store);
    tokio::spawn(async move { warming.warm_up().await });
    Ok(Some(store))
}

/// Where managed tokens are kept (never the Redis URL's credentials).
fn store_line(config: &Config) -> String {
    match &config.store {
        _ if config.sandbox.enabled => "token store: memory (sandbox)".to_owned(),
        crate::config::StoreSettings::File => format!(
            "token store: file {}",
            TokenStore::path_in(&config.proxy.state_dir).display()
        ),
        crate::config::StoreSettings::Redis(redis) => format!(
            "token store: redis {} (key prefix {:?}), shared by every replica",
            crate::config::redacted_url(redis.url.expose()),
            redis.key_prefix
        ),
    }
}

/// What `run` says (and `check` prints) when the sandbox answers in the marketplaces' place.
const SANDBOX_LINE: &str = "sandbox: marketplace hosts and token endpoints are answered by the built-in stand-ins; nothing signed leaves this machine (tokens are kept in memory only)";

/// `sandbox serve`: the stand-ins behind an HTTPS listener, until SIGINT/SIGTERM.
fn sandbox_serve(flag: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    let mut config = load(flag)?;
    config.sandbox.enabled = true;
    crate::logging::init(&config.log);
    create_state_dir(&config)?;
    let ca = CertificateAuthority::load_or_create(&config.mitm).map_err(|e| e.to_string())?;
    for warning in ca.warnings() {
        tracing::warn!("{warning}");
    }
    let config = Arc::new(config);
    let addr = listen.unwrap_or(config.sandbox.listen);
    runtime()?.block_on(async move {
        let listener = bind(addr, "sandbox.listen").await?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let clock = crate::clock::system();
        let book = Arc::new(crate::marketplace::stand_in::TokenBook::new());
        let sandbox = Arc::new(crate::sandbox::Sandbox::new(
            Arc::clone(&config),
            clock,
            book,
        ));
        tracing::info!(
            listen = %local,
            ca_cert = %config.mitm.ca_cert.display(),
            "sandbox serving: dial this address for the profiles' hosts with the CA trusted"
        );
        for p in &config.profiles {
            let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
            tracing::info!(
                "stand-in {} for {} (token endpoint: {})",
                p.qualified_name(),
                hosts.join(", "),
                p.stand_in.token_hosts().join(", ")
            );
        }
        crate::sandbox::serve(sandbox, Arc::new(ca), listener, shutdown_signal()).await;
        tracing::info!("sandbox stopped");
        Ok(())
    })
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} ({e}): change [{}]",
            key.replace('.', "] ")
        )
    })
}

/// Managed tokens are fetched at start (and after a reload) rather than on the first request.
async fn obtain_missing_tokens(proxy: Proxy) {
    let state = proxy.state();
    state
        .tokens
        .obtain_missing(&state.config, state.clock.now())
        .await;
}

/// SIGHUP re-reads the config file and its secrets. A config that does not load leaves the
/// running one in place. The handler is installed by this call, not when the task first runs:
/// until then a SIGHUP takes its default action and ends the process.
fn reload_on_sighup(
    proxy: Proxy,
    path: PathBuf,
    sandbox: bool,
    inbound: InboundListeners,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(e) => {
                    return tracing::warn!(error = %e, "cannot listen for SIGHUP; reload is off")
                }
            };
            while hangups.recv().await.is_some() {
                let reloaded = load_for_run(&path, sandbox).and_then(|config| {
                    let config = Arc::new(config);
                    let mut notes = proxy
                        .reload(Arc::clone(&config))
                        .map_err(|e| e.to_string())?;
                    notes.extend(reload_inbound(&inbound, &config));
                    Ok(notes)
                });
                match reloaded {
                    Ok(notes) => {
                        proxy.metrics().config_reload(Outcome::Success);
                        tracing::info!(config = %path.display(), "config reloaded");
                        for note in notes {
                            tracing::warn!("{note}");
                        }
                        tokio::spawn(obtain_missing_tokens(proxy.clone()));
                    }
                    Err(e) => {
                        proxy.metrics().config_reload(Outcome::Failure);
                        tracing::error!(error = %e, "config reload rejected; still serving the previous config");
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (proxy, path, sandbox, inbound);
    }
}

/// The running inbound listeners, for reloads.
type InboundListeners = Arc<std::sync::Mutex<Vec<Arc<crate::inbound::Inbound>>>>;

/// Hands each running inbound listener its settings from `config` (by listener name).
fn reload_inbound(running: &InboundListeners, config: &Config) -> Vec<String> {
    let running = match running.lock() {
        Ok(r) => r.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let mut notes = Vec::new();
    for listener in running {
        let name = listener.settings().name.clone();
        // A removed listener is said once, with the other restart-only changes.
        if let Some(new) = config.inbound.iter().find(|i| i.name == name) {
            notes.extend(listener.reload(Arc::new(new.clone())));
        }
    }
    notes
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn route_lines(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &config.profiles {
        let scheme = p.signer.scheme();
        let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
        let token = match &p.token {
            TokenSource::None => String::new(),
            TokenSource::Static(_) => ", static access token".to_owned(),
            TokenSource::Managed(endpoint) => format!(", {}", endpoint.describe()),
        };
        lines.push(format!(
            "{} -> {} [{scheme}{token}]",
            hosts.join(", "),
            p.qualified_name()
        ));
    }
    let proxy = &config.proxy;
    let ports: Vec<String> = proxy.passthrough_ports.iter().map(u16::to_string).collect();
    for pattern in &proxy.passthrough {
        lines.push(format!(
            "{pattern} -> passthrough (unsigned; CONNECT ports {}; guarded)",
            ports.join(", ")
        ));
    }
    for network in &proxy.allow_networks {
        lines.push(format!(
            "{network} -> reachable by passthrough (allow_networks)"
        ));
    }
    lines.push("anything else -> refused (403 host_not_allowed)".to_owned());
    lines
}

/// Who may use the proxy, as `check` and the start-up log say it.
fn access_line(config: &Config) -> String {
    match &config.proxy.auth {
        Some(auth) => {
            let clients: Vec<String> = auth
                .clients
                .iter()
                .map(|c| match &c.profiles {
                    Some(p) => format!("{} ({})", c.username, p.join(", ")),
                    None => format!("{} (all profiles)", c.username),
                })
                .collect();
            format!("proxy clients: {}", clients.join("; "))
        }
        None if config.proxy.listen.ip().is_loopback() => {
            "proxy clients: anyone on this machine (loopback listen, no [proxy.auth])".to_owned()
        }
        None => "proxy clients: ANYONE who can reach the listen address (allow_unauthenticated)"
            .to_owned(),
    }
}

fn ca(action: CaAction) -> Result<(), String> {
    match action {
        CaAction::Init { config, force } => {
            let config = load(config)?;
            let mitm = &config.mitm;
            let existed = mitm.ca_cert.exists() || mitm.ca_key.exists();
            if force {
                CertificateAuthority::replace(mitm)
            } else {
                CertificateAuthority::create(mitm)
            }
            .map_err(|e| e.to_string())?;
            let done = if existed { "replaced" } else { "created" };
            println!("{done} CA certificate {}", mitm.ca_cert.display());
            println!(
                "{done} CA key         {} (mode 0600)",
                mitm.ca_key.display()
            );
            let hosts: Vec<String> = mitm.permitted_hosts.iter().map(|h| h.to_string()).collect();
            println!(
                "valid only for: {} (X.509 name constraints)",
                if hosts.is_empty() {
                    "no host (no profile is configured)".to_owned()
                } else {
                    hosts.join(", ")
                }
            );
            if existed {
                println!("clients that trusted the old certificate must trust this one instead: see `signproxy ca cert` and README.md");
            } else {
                println!("trust it in clients: see `signproxy ca cert` and README.md");
            }
            Ok(())
        }
        CaAction::Cert { config } => {
            let config = load(config)?;
            let authority =
                CertificateAuthority::load_or_create(&config.mitm).map_err(|e| e.to_string())?;
            print!("{}", authority.cert_pem());
            Ok(())
        }
    }
}

/// `store migrate --from file --to redis`: each profile's pair, written only where Redis holds
/// nothing for it yet (compare-and-swap against "absent"), so a running fleet is never undone.
fn store_migrate(flag: Option<PathBuf>) -> Result<(), String> {
    use crate::token::backend::Store as _;
    let config = load(flag)?;
    let crate::config::StoreSettings::Redis(settings) = &config.store else {
        return Err(format!(
            "{}: [store] backend is \"file\": set backend = \"redis\" and url first, then migrate",
            config.source.display()
        ));
    };
    let path = TokenStore::path_in(&config.proxy.state_dir);
    if !path.exists() {
        return Err(format!(
            "no token file at {}: nothing to migrate (check [proxy] state_dir)",
            path.display()
        ));
    }
    let (file, warning) = TokenStore::open(&config.proxy.state_dir).map_err(|e| e.to_string())?;
    if let Some(warning) = warning {
        return Err(warning);
    }
    let redis = crate::token::redis_store::RedisStore::new(settings).map_err(|e| e.to_string())?;
    runtime()?.block_on(async move {
        let mut out = std::io::stdout().lock();
        let (mut moved, mut kept) = (0, 0);
        for name in file.names() {
            let Some(entry) = file.get(&name) else {
                continue;
            };
            let current = redis.load(&name).await.map_err(|e| e.to_string())?;
            if current.profile.is_some() {
                kept += 1;
                let _ = writeln!(out, "{name}: already in {}, left alone", redis.describe());
                continue;
            }
            match redis.put(&name, current.version, entry).await {
                Ok(Some(_)) => {
                    moved += 1;
                    let _ = writeln!(out, "{name}: moved");
                }
                Ok(None) => {
                    kept += 1;
                    let _ = writeln!(out, "{name}: a replica stored tokens meanwhile, left alone");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = writeln!(
            out,
            "{moved} profile(s) moved to {}, {kept} left alone; {} is no longer used with backend = \"redis\" (delete it once the replicas run)",
            redis.describe(),
            path.display()
        );
        Ok(())
    })
}

fn check(flag: Option<PathBuf>) -> Result<(), String> {
    let path = config::resolve_path(flag.as_deref());
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    // What `run` would load from the state folder, inspected without creating anything.
    let ca_warnings = CertificateAuthority::inspect(&config.mitm).map_err(|e| e.to_string())?;
    let expiring: Vec<String> = config
        .profiles
        .iter()
        .filter_map(|p| p.expiry_warning(SystemClock.now()))
        .collect();
    for warning in ca_warnings
        .iter()
        .chain(&TokenStore::permission_warning(&config.proxy.state_dir))
        .chain(&expiring)
    {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: OK", path.display());
    let _ = writeln!(out, "listen {}", config.proxy.listen);
    if let Some(admin) = config.admin.listen {
        let _ = writeln!(out, "admin {admin} (/healthz /readyz /metrics)");
    }
    let _ = writeln!(out, "{}", access_line(&config));
    let _ = writeln!(out, "{}", store_line(&config));
    for line in route_lines(&config) {
        let _ = writeln!(out, "route {line}");
    }
    for line in inbound_lines(&config) {
        let _ = writeln!(out, "{line}");
    }
    if config.sandbox.enabled {
        let _ = writeln!(out, "{SANDBOX_LINE}");
    }
    Ok(())
}

/// `inbound NAME ADDR PATH -> URL (profile P, answer within N ms)`, one per route.
fn inbound_lines(config: &Config) -> Vec<String> {
    config
        .inbound
        .iter()
        .flat_map(|i| {
            i.routes.iter().map(move |r| {
                format!(
                    "inbound {} {}{} -> {}{} (profile {}, answer within {} ms)",
                    i.name,
                    i.listen,
                    r.path,
                    i.forward_to.to_string().trim_end_matches('/'),
                    r.path,
                    r.profile.label(),
                    r.deadline.as_millis()
                )
            })
        })
        .collect()
}

const MANAGED_TOKEN_PLACEHOLDER: &str = "<managed-access-token>";

#[derive(Args, Debug)]
struct SignArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Profile name (as with the x-signproxy-profile header).
    #[arg(long)]
    profile: Option<String>,
    /// Fix the clock (Unix seconds): TikTok `timestamp`, eBay `created`.
    #[arg(long)]
    now: Option<u64>,
    /// A request header, `Name: value`. Repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The request body.
    #[arg(short = 'd', long = "data", conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the request body from a file, byte for byte.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Also print the string-to-sign / signature base, secrets masked.
    #[arg(long)]
    explain: bool,
    method: String,
    url: String,
}

fn sign(args: SignArgs) -> Result<(), String> {
    let config = load(args.config)?;
    let method = Method::from_bytes(args.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", args.method))?;
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("`{}` is not a URL ({e})", args.url))?;
    let host = normalize_host(uri.host().ok_or_else(|| {
        format!(
            "`{}` has no host: give a full URL such as https://HOST/PATH",
            args.url
        )
    })?);
    let https = uri.scheme_str() != Some("http");
    let dest = Destination {
        host: &host,
        port: named_port(https, uri.port_u16()),
        tunnel: false,
        https,
    };
    let port = signed_port(https, uri.port_u16());
    let requested = args.profile.as_deref();
    let routed = match route(&config, dest, requested, None) {
        // `sign` dials nothing, and vectors (eBay's verification service) name other ports:
        // print the request, and say that the proxy itself would refuse it.
        Err(e @ RouteError::MarketplacePort { .. }) => {
            eprintln!("note: the proxy would refuse this request: {e}");
            route(&config, Destination { port: 443, ..dest }, requested, None)
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    let profile = match routed {
        Route::Sign(profile) => profile,
        Route::Passthrough => {
            return Err(format!(
                "`{host}` is a passthrough host: signproxy forwards it unsigned"
            ))
        }
    };

    let mut headers = HeaderMap::new();
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header `{line}` is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of header `{name}` is not valid in HTTP"))?;
        headers.append(name, value);
    }
    let body: Vec<u8> = match (&args.data, &args.data_file) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("cannot read --data-file {} ({e})", path.display()))?,
        (None, None) => Vec::new(),
    };

    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let head = prepare_head(
        method,
        https_authority(&host, port),
        path_and_query,
        headers,
        body.len(),
    )
    .map_err(|e| e.to_string())?;
    // Offline, a managed token cannot be fetched: a placeholder shows where the proxy puts it.
    let token = match &profile.token {
        TokenSource::None => None,
        TokenSource::Static(token) => Some(token.clone()),
        _ => Some(Secret::new(MANAGED_TOKEN_PLACEHOLDER)),
    };
    let now = args
        .now
        .map(Timestamp::from_secs)
        .unwrap_or_else(|| SystemClock.now());
    let input = SignInput {
        head: &head,
        body: &body,
        access_token: token.as_ref(),
        now,
    };
    let signed = if args.explain {
        sign_explained(profile.signer.as_ref(), input).map(|e| (e.head, Some(e.explanation)))
    } else {
        profile.signer.sign(input).map(|head| (head, None))
    };
    let (signed, explanation) = signed.map_err(|e| format!("cannot sign: {e}"))?;
    let mask = |value: &str| -> String {
        match &profile.token {
            TokenSource::Static(token) if !token.is_empty() => {
                value.replace(token.expose(), "<access_token>")
            }
            _ => value.to_owned(),
        }
    };
    let head = &signed;
    let mut out = String::new();
    out.push_str(&format!(
        "{} https://{}{} HTTP/1.1\n",
        head.method, head.authority, head.path_and_query
    ));
    for (name, value) in &head.headers {
        out.push_str(&format!(
            "{name}: {}\n",
            mask(&String::from_utf8_lossy(value.as_bytes()))
        ));
    }
    out.push('\n');
    if let Some(explanation) = explanation {
        out.push_str(&mask(&explanation));
        out.push('\n');
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// How long `signproxy health` waits for the admin port.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn health(flag: Option<PathBuf>, addr: Option<String>, live: bool) -> Result<(), String> {
    let path = config::resolve_path(flag.as_deref());
    // With --addr the config is only needed for the admin token, and may be absent.
    let admin = match (&addr, config::admin_settings(&path)) {
        (_, Ok(admin)) => Some(admin),
        (Some(_), Err(_)) => None,
        (None, Err(e)) => return Err(e.to_string()),
    };
    let target = match addr {
        Some(addr) => addr,
        None => {
            let listen = admin.as_ref().and_then(|a| a.listen).ok_or_else(|| {
                format!(
                    "{}: [admin] listen is not set: set it (e.g. \"127.0.0.1:9090\") or pass --addr",
                    path.display()
                )
            })?;
            probe_address(listen).to_string()
        }
    };
    let endpoint = if live { "/healthz" } else { "/readyz" };
    let token = admin.and_then(|a| a.token);
    let (status, body) = http_get(&target, endpoint, token.as_ref())?;
    println!("{}", body.trim_end());
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{endpoint} on {target} answered {status}"))
    }
}

/// A wildcard listen address is probed on loopback.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// A minimal blocking HTTP/1.1 GET: the health check must work without the async runtime.
fn http_get(target: &str, path: &str, token: Option<&Secret>) -> Result<(u16, String), String> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("`{target}` is not an address ({e})"))?
        .next()
        .ok_or_else(|| format!("`{target}` resolves to no address"))?;
    let unreachable = |e: std::io::Error| format!("cannot reach the admin port {target}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(HEALTH_TIMEOUT))
        .map_err(unreachable)?;
    let authorization = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {target}\r\n{authorization}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("{target} did not answer HTTP"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
