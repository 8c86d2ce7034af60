//! End to end, secrets and the files that hold them, with the real `signproxy` binary: a secret
//! of the wrong TOML type never reaches `check`, `run` or a SIGHUP reload's error; files others
//! can read are warned about with the fix; `ca init --force` replaces a CA whose name
//! constraints no longer cover the profiles' hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_signproxy");
/// Distinctive digits: a numeric app_secret that must never be printed.
const NUMERIC_SECRET: &str = "86753091234";
const LITERAL_SECRET: &str = "literal-secret-5e1f";
const FORMS: &str = r#"a secret: "literal" in quotes, { env = "VAR" } or { file = "PATH" }"#;
const WAIT: Duration = Duration::from_secs(20);

/// A config with its state in `dir/state`, both ports on 127.0.0.1:0 and JSON logs; `secret` is
/// the TOML value of `app_secret`, `hosts` the profile's hosts.
fn config(dir: &Path, secret: &str, hosts: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\n\
         [log]\nformat = \"json\"\n\n\
         [tiktok.default]\napp_key = \"k\"\napp_secret = {secret}\nhosts = {hosts}\n",
        dir.join("state").to_string_lossy()
    )
}

const TIKTOK_HOSTS: &str = "[\"open-api.tiktokglobalshop.com\"]";

fn write_config(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    set_mode(path, mode);
}

fn set_mode(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SIGNPROXY_CONFIG")
        .env_remove("SIGNPROXY_LOG")
        .env_remove("SIGNPROXY_STATE_DIR")
        .stdin(Stdio::null());
    cmd
}

fn signproxy(args: &[&str]) -> Output {
    command(args).output().expect("run signproxy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `signproxy run` as a child process whose stderr lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = command(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signproxy run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut running = Running { child, lines };
        running.wait_for(
            1,
            |v| v["message"] == "signproxy listening",
            "the listening line",
        );
        running
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn json(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `count` JSON log lines match `pred`; returns them.
    fn wait_for(&mut self, count: usize, pred: impl Fn(&Value) -> bool, what: &str) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<Value> = self.json().into_iter().filter(|v| pred(v)).collect();
            if found.len() >= count {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "signproxy exited ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!("waited {WAIT:?} for {what}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn permission_warnings(run: &Running) -> Vec<Value> {
    run.json()
        .into_iter()
        .filter(|v| v["level"] == "WARN")
        .filter(|v| {
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("chmod 600")
        })
        .collect()
}

#[test]
fn check_and_run_refuse_a_numeric_secret_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    write_config(
        &path,
        &config(dir.path(), NUMERIC_SECRET, TIKTOK_HOSTS),
        0o600,
    );
    for sub in ["check", "run"] {
        let out = signproxy(&[sub, "--config", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{sub}: {err}");
        assert!(
            err.contains(path.to_str().unwrap()),
            "{sub} names the file: {err}"
        );
        assert!(err.contains("line 10"), "{sub} names the line: {err}");
        assert!(err.contains(FORMS), "{sub} names the forms: {err}");
        assert!(err.contains("found an integer"), "{sub}: {err}");
        assert!(!err.contains("8675309"), "{sub} prints the secret: {err}");
        assert!(!stdout(&out).contains("8675309"), "{sub}");
    }
}

#[test]
fn a_reload_to_a_numeric_secret_is_rejected_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    let good = format!("\"{LITERAL_SECRET}\"");
    write_config(&path, &config(dir.path(), &good, TIKTOK_HOSTS), 0o600);
    let mut run = Running::start(&path);
    write_config(
        &path,
        &config(dir.path(), NUMERIC_SECRET, TIKTOK_HOSTS),
        0o600,
    );
    run.hangup();
    let rejected = "config reload rejected; still serving the previous config";
    let line = run
        .wait_for(1, |v| v["message"] == rejected, "the rejection line")
        .remove(0);
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 10") && error.contains(FORMS) && error.contains("found an integer"),
        "{line}"
    );
    assert!(run.child.try_wait().unwrap().is_none(), "still serving");
    let all = run.output();
    assert!(
        !all.contains("8675309"),
        "the log prints the secret:\n{all}"
    );
    assert!(!all.contains(LITERAL_SECRET), "{all}");
}

#[cfg(unix)]
#[test]
fn run_warns_about_a_readable_config_with_literal_secrets_at_start_and_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    let text = config(dir.path(), &format!("\"{LITERAL_SECRET}\""), TIKTOK_HOSTS);
    write_config(&path, &text, 0o644);
    let mut run = Running::start(&path);
    let fix = format!("chmod 600 {}", path.display());
    let at_start = permission_warnings(&run);
    assert_eq!(at_start.len(), 1, "{}", run.output());
    assert!(
        at_start[0]["message"].as_str().unwrap().contains(&fix),
        "{}",
        at_start[0]
    );
    run.hangup();
    run.wait_for(1, |v| v["message"] == "config reloaded", "the reload line");
    let after = permission_warnings(&run);
    assert_eq!(
        after.len(),
        2,
        "repeated after the reload:\n{}",
        run.output()
    );
    assert!(!run.output().contains(LITERAL_SECRET));

    // Fixed as told: the next reload is quiet.
    set_mode(&path, 0o600);
    run.hangup();
    run.wait_for(
        2,
        |v| v["message"] == "config reloaded",
        "the second reload",
    );
    assert_eq!(permission_warnings(&run).len(), 2, "{}", run.output());
}

#[cfg(unix)]
#[test]
fn check_warns_about_readable_secret_files_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    let text = config(dir.path(), &format!("\"{LITERAL_SECRET}\""), TIKTOK_HOSTS);
    let p = path.to_str().unwrap();

    write_config(&path, &text, 0o644);
    let out = signproxy(&["check", "--config", p]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let warning = format!("warning: {p} holds literal secrets (tiktok.default.app_secret)");
    assert!(err.contains(&warning), "{err}");
    assert!(err.contains(&format!("chmod 600 {p}")), "{err}");
    assert!(!err.contains(LITERAL_SECRET), "{err}");

    write_config(&path, &text, 0o600);
    let out = signproxy(&["check", "--config", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // The CA key in the state folder is checked as well.
    let init = signproxy(&["ca", "init", "--config", p]);
    assert!(init.status.success(), "{}", stderr(&init));
    let key = dir.path().join("state").join("ca-key.pem");
    set_mode(&key, 0o644);
    let out = signproxy(&["check", "--config", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("warning: {}", key.display()))
            && stderr(&out).contains(&format!("chmod 600 {}", key.display())),
        "{}",
        stderr(&out)
    );
}

fn mode(path: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        0
    }
}

#[test]
fn ca_init_force_replaces_a_ca_that_does_not_cover_the_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signproxy.toml");
    let p = path.to_str().unwrap();
    let secret = format!("\"{LITERAL_SECRET}\"");
    write_config(&path, &config(dir.path(), &secret, TIKTOK_HOSTS), 0o600);
    let state = dir.path().join("state");
    let cert: PathBuf = state.join("ca-cert.pem");

    let out = signproxy(&["ca", "init", "--config", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("valid only for: open-api.tiktokglobalshop.com"),
        "{}",
        stdout(&out)
    );
    if cfg!(unix) {
        assert_eq!(mode(&state), 0o700, "the state folder it made is private");
        assert_eq!(mode(&state.join("ca-key.pem")), 0o600);
    }
    let first = std::fs::read_to_string(&cert).unwrap();
    let again = signproxy(&["ca", "init", "--config", p]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), first, "kept");

    // A new profile host the CA does not cover: check and run say so and how to fix it.
    let wider = "[\"open-api.tiktokglobalshop.com\", \"*.shop.example\"]";
    write_config(&path, &config(dir.path(), &secret, wider), 0o600);
    for sub in ["check", "run"] {
        let out = signproxy(&[sub, "--config", p]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{sub}: {err}");
        assert!(
            err.contains("*.shop.example")
                && err.contains("signproxy ca init --force")
                && err.contains(&cert.display().to_string()),
            "{sub}: {err}"
        );
    }

    let out = signproxy(&["ca", "init", "--force", "--config", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains(&format!("replaced CA certificate {}", cert.display()))
            && printed.contains("valid only for: open-api.tiktokglobalshop.com, *.shop.example"),
        "{printed}"
    );
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), first);
    if cfg!(unix) {
        assert_eq!(mode(&state.join("ca-key.pem")), 0o600);
    }
    let out = signproxy(&["check", "--config", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}
