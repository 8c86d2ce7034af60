//! The CLI contract (`check`, `sign`, `doctor`, `sandbox serve`) and every README example that
//! can run on loopback: the quickstart `sign` output, the config blocks, the example config, and
//! every example that talks to a marketplace, against the sandbox on the example config.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::proxy::ProxyHarness;
use common::readme::{fenced_blocks, readme};
use common::*;

fn signproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run signproxy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `sh` block's commands with `\` continuations joined and comments dropped.
fn commands(block: &str) -> Vec<String> {
    let joined = block.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Splits a shell line into words, honouring single quotes (all the README uses).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            _ => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[test]
fn readme_quickstart_has_exactly_the_two_commands() {
    let quickstart = &fenced_blocks(&readme(), "sh")[0];
    assert_eq!(
        commands(quickstart),
        vec![
            "cargo run --release -- run --sandbox --config config/signproxy.example.toml",
            "cargo test",
        ]
    );
    let ci =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(
        ci.lines()
            .any(|l| l.trim() == "cargo test --locked" || l.trim() == "cargo test"),
        "CI runs the README's test command"
    );
}

#[test]
fn readme_sign_example_prints_exactly_what_the_readme_shows() {
    let text = readme();
    let sh = fenced_blocks(&text, "sh");
    let line = commands(&sh[1])
        .into_iter()
        .find(|c| c.contains(" sign "))
        .expect("a sign example");
    let words = shell_words(&line);
    let after_dashdash = words.iter().position(|w| w == "--").unwrap() + 1;
    let args: Vec<&str> = words[after_dashdash..].iter().map(String::as_str).collect();
    let out = signproxy(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = &fenced_blocks(&text, "text")[0];
    assert_eq!(stdout(&out).trim_end(), shown.trim_end());
    assert!(stdout(&out)
        .contains("sign=b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8"));
}

#[test]
fn readme_config_reference_block_is_valid_config() {
    let block = fenced_blocks(&readme(), "toml")
        .into_iter()
        .find(|b| b.contains("[proxy]") && b.contains("[ebay.default]"))
        .expect("the config reference block");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ebay-signing-key.pem"),
        common::keys::RFC9421_ED25519_PRIVATE_PEM,
    )
    .unwrap();
    std::env::set_var("TIKTOK_APP_SECRET", "readme-secret");
    std::env::set_var("TIKTOK_ACCESS_TOKEN", "readme-token");
    std::env::set_var("EBAY_SIGNATURE_JWE", "readme-jwe");
    std::env::set_var("EBAY_TOKEN", "readme-ebay-token");
    std::env::set_var("SHOPEE_PARTNER_KEY", "readme-shopee-key");
    std::env::set_var("SHOPEE_REFRESH_TOKEN", "readme-shopee-rt");
    std::env::set_var("LAZADA_APP_SECRET", "readme-lazada-secret");
    std::env::set_var("LAZADA_REFRESH_TOKEN", "readme-lazada-rt");
    std::env::set_var("ALIEXPRESS_APP_SECRET", "readme-aliexpress-secret");
    std::env::set_var("ALIEXPRESS_ACCESS_TOKEN", "readme-aliexpress-token");
    std::env::set_var("AMAZON_CLIENT_SECRET", "readme-amazon-secret");
    std::env::set_var("AMAZON_REFRESH_TOKEN", "Atzr|readme-amazon-rt");
    let config = signproxy::config::Config::from_toml_str(&block, dir.path())
        .unwrap_or_else(|e| panic!("README config block: {e}"));
    // One profile per marketplace.
    assert_eq!(
        config.profiles.len(),
        signproxy::marketplace::MARKETPLACES.len()
    );
    assert_eq!(
        config.upstream.connect_to["api.ebay.com:443"],
        "127.0.0.1:9443"
    );
}

#[test]
fn shipped_example_config_checks_and_lists_routes() {
    let out = signproxy(&["check", "--config", "config/signproxy.example.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.contains("open-api.tiktokglobalshop.com -> tiktok.default"),
        "{s}"
    );
    assert!(s.contains("api.ebay.com, apiz.ebay.com, api.sandbox.ebay.com, apiz.sandbox.ebay.com -> ebay.default"), "{s}");
    assert!(s.contains("403 host_not_allowed"));
}

/// The example config as shipped, in the sandbox (what `run --sandbox` does), with its state in
/// a temp folder; every upstream name points at `network`, which must see nothing.
fn example_in_sandbox() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/signproxy.example.toml")).unwrap();
    example
        .replace("[proxy]\n", "[proxy]\nstate_dir = \"@STATE@\"\n")
        .replace("connect_to = {}", "connect_to = @CONNECT_TO@")
        .replace("enabled = false ", "enabled = true ")
}

/// Whether `python3` with `requests` is here (.ci/run installs it); else the test says so.
fn python_with_requests(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED {test}: python3 with requests not found (.ci/run installs python3-requests)"
        );
    }
    found
}

async fn python(script: &str, env: &[(&str, String)]) -> Output {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c").arg(script);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run python3")
}

/// Every README example that talks to a marketplace, run as written (but for the proxy's port
/// and the CA file's path) against `run --sandbox` on the example config: the quickstart curl
/// and Python calls, and the per-language curl and Python setups, in both proxy modes.
#[tokio::test]
async fn readme_marketplace_examples_get_verified_answers_from_the_sandbox() {
    let ca = TestCa::new();
    let network = TestUpstream::start(&ca, Verifier::None);
    let proxy = ProxyHarness::start(&example_in_sandbox(), &ca, Some(&network)).await;
    let ca_file = proxy.dir.path().join("signproxy-ca.pem");
    std::fs::write(&ca_file, proxy.proxy_ca_pem()).unwrap();
    let here = |text: &str| {
        text.replace("127.0.0.1:8080", &proxy.addr.to_string())
            .replace("$PWD/signproxy-ca.pem", &ca_file.to_string_lossy())
            .replace("signproxy-ca.pem", &ca_file.to_string_lossy())
    };
    let text = readme();
    let sh = fenced_blocks(&text, "sh");

    if require_curl("readme_marketplace_examples_get_verified_answers_from_the_sandbox") {
        let per_language = sh
            .iter()
            .find(|b| b.contains("--cacert signproxy-ca.pem https://api.ebay.com"))
            .expect("the per-language curl block");
        let lines: Vec<String> = commands(&sh[1])
            .into_iter()
            .chain(commands(per_language))
            .filter(|c| c.starts_with("curl "))
            .collect();
        // The quickstart's call, then one per marketplace of the example config.
        assert_eq!(lines.len(), 7, "{lines:?}");
        let expire = sh
            .iter()
            .find(|b| b.contains("/signproxy-sandbox/expire-tokens"))
            .expect("the sandbox's expire-tokens example");
        // Expiring every token in between: the later calls show refresh-on-expiry.
        let lines: Vec<String> = lines[..1]
            .iter()
            .cloned()
            .chain(commands(expire))
            .chain(lines[1..].iter().cloned())
            .collect();
        for line in lines {
            let words = shell_words(&here(&line));
            let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
            let out = curl(&args).await;
            assert_eq!(out.status, 200, "{line}: {}", out.stderr);
            assert_eq!(out.header("x-signproxy-sandbox"), Some("1"), "{line}");
            let json = out.json();
            if line.contains("expire-tokens") {
                assert!(json["expired"].is_string(), "{json}");
                continue;
            }
            // Each marketplace's envelope puts the stand-in's echo where its data goes.
            let echo = ["data", "response"]
                .iter()
                .map(|field| &json[field]["sandbox"])
                .chain([&json["sandbox"]])
                .find(|echo| !echo.is_null())
                .cloned()
                .unwrap_or_default();
            assert_eq!(echo["verified"], true, "{line}: {json}");
        }
    }

    if python_with_requests("readme_marketplace_examples_get_verified_answers_from_the_sandbox") {
        let blocks = fenced_blocks(&text, "python");
        let quickstart = python(&here(&blocks[0]), &[]).await;
        assert_eq!(
            stdout(&quickstart).trim(),
            "0 UNPAID",
            "{}",
            stderr(&quickstart)
        );
        // The per-language block relies on the environment it sets up just above it.
        let env = [
            ("HTTP_PROXY", format!("http://{}", proxy.addr)),
            ("HTTPS_PROXY", format!("http://{}", proxy.addr)),
            ("REQUESTS_CA_BUNDLE", ca_file.to_string_lossy().into_owned()),
        ];
        let script = format!(
            "{}\nprint(r.status_code, r.json()[\"code\"])\n\
             print(shop.status_code, repr(shop.json()[\"error\"]))\n\
             for iop in (orders, listed):\n    \
             print(iop.status_code, iop.json()[\"code\"], iop.json()[\"data\"][\"sandbox\"][\"verified\"])",
            blocks[1]
        );
        assert!(blocks[1].contains("https://open-api.tiktokglobalshop.com"));
        let per_language = python(&script, &env).await;
        assert_eq!(
            stdout(&per_language).trim(),
            "200 0\n200 ''\n200 0 True\n200 0 True",
            "{}",
            stderr(&per_language)
        );
    }
    assert_eq!(network.connections_accepted(), 0, "the sandbox dialled out");
    let refreshed = proxy
        .metric("signproxy_token_refreshes_total{profile=\"tiktok.default\",outcome=\"success\"}");
    assert!(
        refreshed >= 2.0,
        "expire-tokens led to a refresh: {refreshed}"
    );
}

/// The `sandbox serve` block as written (the binary for `signproxy`, a free port for 8443, a
/// temporary state folder): the served stand-in judges the doc's stale example request.
#[tokio::test]
async fn readme_sandbox_serve_example_works_as_written() {
    if !require_curl("readme_sandbox_serve_example_works_as_written") {
        return;
    }
    let block = fenced_blocks(&readme(), "sh")
        .into_iter()
        .find(|b| b.contains("signproxy sandbox serve"))
        .expect("the sandbox serve block");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    let ca_file = state.path().join("signproxy-ca.pem");
    let here = |line: &str| {
        line.replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
            .replace("signproxy-ca.pem", &ca_file.to_string_lossy())
    };
    let lines = commands(&block);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let serve_words = shell_words(&here(lines[1].trim_end_matches('&').trim()));
    let cert_line = here(&lines[0]);
    let (cert, _) = cert_line.split_once('>').unwrap();
    let words = shell_words(cert);
    let out = Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args(&words[1..])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SIGNPROXY_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&ca_file, &out.stdout).unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_signproxy"))
        .args(&serve_words[1..])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SIGNPROXY_STATE_DIR", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "sandbox serve did not listen on {port}");
    let words = shell_words(&here(&lines[2]));
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let answer = curl(&args).await;
    assert_eq!(answer.status, 401, "{}", answer.stderr);
    let json = answer.json();
    assert_eq!(json["code"], 36009004, "{json}");
    assert!(
        json["message"].as_str().unwrap().contains("s old"),
        "{json}"
    );
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

#[test]
fn check_reports_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let cases: [(&str, &[&str]); 5] = [
        ("[proxy]\nlisten = \"nope\"\n", &["proxy.listen", "IP:PORT"]),
        (
            "[proxy]\nlisten_addr = \"127.0.0.1:1\"\n",
            &["unknown field `listen_addr`", "line 2"],
        ),
        (
            "[tiktok.shop]\napp_key = \"k\"\napp_secret = { env = \"SIGNPROXY_CLI_TEST_UNSET\" }\n",
            &["tiktok.shop.app_secret", "SIGNPROXY_CLI_TEST_UNSET"],
        ),
        (
            "[ebay.eu]\nprivate_key = \"not a key\"\njwe = \"j\"\n",
            &["ebay.eu.private_key"],
        ),
        (
            "[tiktok.x]\napp_key = \"k\"\napp_secret = \"s\"\nhosts = [\"https://x.com\"]\n",
            &["tiktok.x.hosts", "host pattern"],
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&path, text).unwrap();
        let out = signproxy(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(
            err.contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
        for e in expected {
            assert!(err.contains(e), "expected {e:?} in {err}");
        }
    }
    let out = signproxy(&[
        "check",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read the config file"));
}

#[test]
fn sign_errors_exit_1_with_a_message() {
    let out = signproxy(&[
        "sign",
        "--config",
        "config/signproxy.example.toml",
        "GET",
        "https://example.com/x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("host_not_allowed")
            || stderr(&out).contains("no profile serves host `example.com`"),
        "{}",
        stderr(&out)
    );
    let out = signproxy(&[
        "sign",
        "--config",
        "config/signproxy.example.toml",
        "GET",
        "https://open-api.tiktokglobalshop.com/x?a=1&a=2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("appears more than once"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sign_body_from_file_is_signed_byte_for_byte_with_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let body = "{ \"x\" : \"ü\" }\n";
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = signproxy(&[
        "sign",
        "--config",
        "config/signproxy.example.toml",
        "--now",
        "1696909648",
        "-H",
        "Content-Type: application/json",
        "--data-file",
        file.to_str().unwrap(),
        "POST",
        "https://open-api.tiktokglobalshop.com/event/202309/webhooks",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.contains(&format!("content-length: {}\n", body.len())),
        "{s}"
    );
    // The signature is the independent verifier's, over the same bytes.
    let inner = format!("/event/202309/webhooksapp_key29a39dtimestamp1696909648{body}");
    let expected = common::verify::tiktok_sign_hex("e59af819cc", inner.as_bytes());
    assert!(s.contains(&format!("sign={expected}")), "{s}");
}

/// The config the Docker image ships and compose mounts is valid once its secrets exist, and
/// `signproxy health` (the image's HEALTHCHECK) finds the admin port in it.
#[test]
fn docker_config_is_valid_and_health_finds_its_admin_port() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("docker/signproxy.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for name in [
        "tiktok_app_secret",
        "tiktok_refresh_token",
        "ebay_signature_jwe",
        "ebay_client_secret",
        "ebay_refresh_token",
        "proxy_password",
        "admin_token",
    ] {
        std::fs::write(secrets.join(name), format!("docker-{name}\n")).unwrap();
    }
    std::fs::write(
        secrets.join("ebay_signing_key"),
        common::keys::RFC9421_ED25519_PRIVATE_PEM,
    )
    .unwrap();
    let text = shipped
        .replace("/run/secrets/", &format!("{}/", secrets.display()))
        .replace("/var/lib/", &format!("{}/", dir.path().display()));
    let config = signproxy::config::Config::from_toml_str(&text, dir.path())
        .unwrap_or_else(|e| panic!("docker/signproxy.toml: {e}"));
    assert_eq!(config.proxy.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.log.format, signproxy::config::LogFormat::Json);
    assert!(config.profiles.iter().all(|p| p.token.is_managed()));

    let auth = config
        .proxy
        .auth
        .as_ref()
        .expect("the sidecar authenticates its clients");
    assert_eq!(auth.clients[0].username, "app");
    assert_eq!(auth.clients[0].password.expose(), "docker-proxy_password");
    let rewritten = dir.path().join("signproxy.toml");
    std::fs::write(&rewritten, &text).unwrap();
    let admin = signproxy::config::admin_settings(&rewritten)
        .expect("health reads [admin] without the other secrets");
    assert_eq!(
        admin.listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9090")
    );
    assert_eq!(
        admin.token.as_ref().map(|t| t.expose()),
        Some("docker-admin_token")
    );
    let compose = std::fs::read_to_string(root.join("docker/compose.yaml")).unwrap();
    assert!(compose.contains("HTTP_PROXY: http://app:${SIGNPROXY_PROXY_PASSWORD}@signproxy:8080"));
    let env = std::fs::read_to_string(root.join("docker/.env")).unwrap();
    assert!(env.contains("SIGNPROXY_PROXY_PASSWORD=") && env.contains("SIGNPROXY_ADMIN_TOKEN="));

    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/signproxy", "health"]"#));
    assert!(dockerfile.contains("COPY docker/signproxy.toml /etc/signproxy/signproxy.toml"));
    assert!(dockerfile.contains("USER 10001:10001"));
}

/// The compose first run: `docker/sandbox.toml` needs no credential but the proxy password and
/// admin token (environment-sourced secrets from docker/.env), serves both marketplaces from the
/// sandbox to an authenticated client, and compose.yaml mounts no secret file; the live overlay
/// names the files the README tells users to create.
#[tokio::test]
async fn docker_first_run_is_the_sandbox_and_needs_no_secret_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("docker/sandbox.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for name in ["proxy_password", "admin_token"] {
        std::fs::write(secrets.join(name), format!("docker-{name}\n")).unwrap();
    }
    let files = shipped.matches("/run/secrets/").count();
    assert_eq!(files, 2, "only the proxy password and admin token");
    let template = shipped
        .replace("/run/secrets/", &format!("{}/", secrets.display()))
        .replace("/var/lib/signproxy-ca/", "@STATE@/")
        .replace("\"/var/lib/signproxy\"", "\"@STATE@\"")
        .replace("/var/lib/signproxy/", "@STATE@/")
        .replace(
            "[admin]\nlisten = \"0.0.0.0:9090\"",
            "[admin]\nlisten = \"127.0.0.1:0\"",
        );
    assert!(template.contains("[sandbox]\nenabled = true"));
    let ca = TestCa::new();
    let network = TestUpstream::start(&ca, Verifier::None);
    let proxy = ProxyHarness::start(
        &format!("{template}\n[upstream]\nconnect_to = @CONNECT_TO@\n"),
        &ca,
        Some(&network),
    )
    .await;
    let client = |password: &str| {
        reqwest_builder(&proxy.proxy_ca_pem())
            .proxy(reqwest::Proxy::all(format!("http://app:{password}@{}", proxy.addr)).unwrap())
            .build()
            .unwrap()
    };
    let url = "https://open-api.tiktokglobalshop.com/authorization/202309/shops";
    let refused = client("wrong").get(url).send().await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("ProxyAuthRequired"),
        "{refused:?}"
    );
    let answer = client("docker-proxy_password")
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let json = response_json(answer).await;
    assert_eq!(json["data"]["sandbox"]["verified"], true, "{json}");
    let funds = client("docker-proxy_password")
        .get("https://api.ebay.com/sell/finances/v1/seller_funds_summary")
        .send()
        .await
        .unwrap();
    assert_eq!(funds.status(), 200);
    assert_eq!(network.connections_accepted(), 0);

    let compose = std::fs::read_to_string(root.join("docker/compose.yaml")).unwrap();
    assert!(compose.contains("./sandbox.toml:/etc/signproxy/signproxy.toml:ro"));
    assert!(
        !compose.contains("file: ./secrets/"),
        "the first run needs no secret file"
    );
    let live = std::fs::read_to_string(root.join("docker/compose.live.yaml")).unwrap();
    let readme = readme();
    for file in [
        "tiktok_app_secret.txt",
        "tiktok_refresh_token.txt",
        "ebay_signing_key.pem",
        "ebay_signature_jwe.txt",
        "ebay_client_secret.txt",
        "ebay_refresh_token.txt",
    ] {
        assert!(live.contains(&format!("file: ./secrets/{file}")), "{file}");
        assert!(
            readme.contains(&format!("docker/secrets/{file}")),
            "README names {file}"
        );
    }
    assert!(live.contains("./signproxy.toml:/etc/signproxy/signproxy.toml:ro"));
}

/// `sign` prints the `/` that HTTP/1.1 sends for an empty path, and signs over it.
#[test]
fn sign_prints_the_slash_of_an_empty_path() {
    let out = signproxy(&[
        "sign",
        "--config",
        "config/signproxy.example.toml",
        "--now",
        "1623812664",
        "GET",
        "https://open-api.tiktokglobalshop.com?page_size=20",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout(&out).lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with("GET https://open-api.tiktokglobalshop.com/?page_size=20&app_key=29a39d&timestamp=1623812664&sign="),
        "{first}"
    );
}

/// The "Trusting signproxy's CA" commands, as written (with the binary for `signproxy` and a
/// temporary state folder): init, init --force, and cert into the file clients trust.
#[test]
fn readme_ca_commands_work_as_written() {
    let block = fenced_blocks(&readme(), "sh")
        .into_iter()
        .find(|b| b.contains("signproxy ca init"))
        .expect("the CA block");
    let state = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in block.lines().filter(|l| l.starts_with("signproxy ")) {
        let command = line.split('#').next().unwrap_or_default();
        let (command, target) = match command.split_once('>') {
            Some((cmd, file)) => (cmd, Some(state.path().join(file.trim()))),
            None => (command, None),
        };
        let words: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_signproxy"))
            .args(&words)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("SIGNPROXY_STATE_DIR", state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        if let Some(file) = target {
            std::fs::write(&file, &out.stdout).unwrap();
            let pem = std::fs::read_to_string(&file).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        ran += 1;
    }
    assert_eq!(ran, 3, "{block}");
}

/// `doctor` on requests someone else's code signed: the documented vector is right (exit 0); the
/// same with upper-case hex is wrong and named (exit 1, text and JSON); a request signed with
/// another profile's secret names that profile.
#[test]
fn doctor_judges_a_raw_request_and_names_the_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let sign = "b596b73e0cc6de07ac26f036364178ab16b0a907af13d43f0a0cd2345f582dc8";
    let write = |name: &str, sign: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "GET https://open-api.tiktokglobalshop.com/authorization/202309/shops?app_key=29a39d&timestamp=1623812664&sign={sign} HTTP/1.1\r\nHost: open-api.tiktokglobalshop.com\r\n\r\n"
        );
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let right = write("right.http", sign);
    let args = |file: &str, extra: &[&str]| {
        let mut a = vec![
            "doctor",
            "--config",
            "config/signproxy.example.toml",
            "--now",
            "1623812670",
        ];
        a.extend_from_slice(extra);
        a.push(file);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        signproxy(&refs)
    };
    let out = run(args(&right, &[]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("tiktok.default: OK"),
        "{}",
        stdout(&out)
    );

    let upper = write("upper.http", &sign.to_uppercase());
    let out = run(args(&upper, &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("WRONG") && text.contains("upper-case"),
        "{text}"
    );
    assert!(
        text.contains(
            "<app_secret>/authorization/202309/shopsapp_key29a39dtimestamp1623812664<app_secret>"
        ),
        "{text}"
    );
    assert!(
        !text.contains("e59af819cc"),
        "the secret is never shown: {text}"
    );
    let out = run(args(&upper, &["--json"]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["profile"], "tiktok.default");
    assert_eq!(json["diagnosis"]["valid"], false);
    assert!(json["diagnosis"]["mistake"]
        .as_str()
        .unwrap()
        .contains("upper-case"));

    // The same request given as `sign` takes one: METHOD URL (with the query as sent).
    let url = format!(
        "https://open-api.tiktokglobalshop.com/authorization/202309/shops?app_key=29a39d&timestamp=1623812664&sign={sign}"
    );
    let out = run(args("GET", &[]).into_iter().chain([url.clone()]).collect());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let upper_url = url.replace(sign, &sign.to_uppercase());
    let out = run(args("GET", &[]).into_iter().chain([upper_url]).collect());
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("upper-case"), "{}", stdout(&out));

    // Another shop's secret: the config holds both profiles, the request claims the default.
    let config = dir.path().join("two.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = {:?}\n[tiktok.default]\napp_key = \"29a39d\"\napp_secret = \"other-secret\"\n[tiktok.eu]\napp_key = \"29a39d\"\napp_secret = \"e59af819cc\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let out = signproxy(&[
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--now",
        "1623812670",
        &right,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("credentials of profile tiktok.eu"),
        "{}",
        stdout(&out)
    );
}

/// `signproxy sign` on the inputs of Shopee's doc (partner 2001887 at 1655714431, its shop and
/// merchant tokens and ids) signs exactly the doc's three base strings: the spec prints no digest,
/// so the independent verifier's HMAC of each doc string is the expectation.
#[test]
fn sign_reproduces_shopee_doc_base_strings_for_each_api_type() {
    let dir = tempfile::tempdir().unwrap();
    let key = "shpk-vector-key";
    let config = dir.path().join("shopee.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = \"{state}\"\n\n\
             [shopee.shop]\npartner_id = 2001887\npartner_key = \"{key}\"\nshop_id = 14701711\n\
             access_token = \"59777174636562737266615546704c6d\"\n\n\
             [shopee.merchant]\npartner_id = 2001887\npartner_key = \"{key}\"\nmerchant_id = 1000000\n\
             access_token = \"09777174636962737266615546704c6d\"\n",
            state = dir.path().join("state").display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cases = [
        (
            "shopee.shop",
            "/api/v2/shop/get_shop_info",
            "2001887/api/v2/shop/get_shop_info165571443159777174636562737266615546704c6d14701711",
        ),
        (
            "shopee.merchant",
            "/api/v2/global_product/get_category",
            "2001887/api/v2/global_product/get_category165571443109777174636962737266615546704c6d1000000",
        ),
        (
            "shopee.shop",
            "/api/v2/public/get_shops_by_partner",
            "2001887/api/v2/public/get_shops_by_partner1655714431",
        ),
    ];
    for (profile, path, doc_base) in cases {
        let out = signproxy(&[
            "sign",
            "--config",
            config.to_str().unwrap(),
            "--now",
            "1655714431",
            "--profile",
            profile,
            "GET",
            &format!("https://partner.shopeemobile.com{path}"),
        ]);
        assert!(out.status.success(), "{path}: {}", stderr(&out));
        let expected = common::verify_shopee::shopee_sign_hex(key, doc_base);
        assert!(
            stdout(&out).contains(&format!("sign={expected}")),
            "{path}: {}",
            stdout(&out)
        );
    }
}

/// `signproxy sign` reproduces Lazada's official vector (secret `helloworld`, `/order/get` at
/// 1517820392000 ms with `order_id=1234` and the token `test`), upper-case hex and all.
#[test]
fn sign_reproduces_the_lazada_official_vector() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lazada.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = \"{}\"\n\n[lazada.default]\napp_key = \"123456\"\n\
             app_secret = \"helloworld\"\naccess_token = \"test\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = signproxy(&[
        "sign",
        "--config",
        config.to_str().unwrap(),
        "--now",
        "1517820392",
        "GET",
        "https://api.lazada.sg/rest/order/get?order_id=1234",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.contains("sign=4190D32361CFB9581350222F345CB77F3B19F0E31D162316848A2C1FFD5FAB4A"),
        "{s}"
    );
    assert!(s.contains("timestamp=1517820392000"), "{s}");
}

/// The Kubernetes example's ConfigMap holds a config signproxy accepts, once the files its
/// Secret mounts exist, and every file it names is one the Secret's creation command provides.
#[test]
fn kubernetes_example_config_is_valid_and_its_secrets_are_the_mounted_ones() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/signproxy.yaml"),
    )
    .unwrap();
    let start = manifest
        .find("signproxy.toml: |\n")
        .expect("the ConfigMap's signproxy.toml");
    let block: String = manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut named = Vec::new();
    for part in block.split("/run/secrets/signproxy/").skip(1) {
        let file: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            manifest.contains(&format!("{file}=")),
            "the Secret's creation command provides {file}"
        );
        let value = if file == "redis_url" {
            "redis://signproxy:pw@127.0.0.1:6379/0"
        } else {
            "k8s-example-value"
        };
        std::fs::write(dir.path().join(&file), value).unwrap();
        named.push(file);
    }
    assert!(named.len() >= 4, "{named:?}");
    let text = block.replace(
        "/run/secrets/signproxy/",
        &format!("{}/", dir.path().display()),
    );
    let config = signproxy::config::Config::from_toml_str(&text, dir.path())
        .unwrap_or_else(|e| panic!("the Kubernetes example config: {e}\n{text}"));
    assert_eq!(config.profiles.len(), 1);
}
