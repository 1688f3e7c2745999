//! The `hub` command line run as a real child process: operator commands against a live hub's
//! database, `hub dev` idempotency, and config errors that name the offending key.

use e2e::{assert_eventually, TestHub};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");

/// Runs `hub ARGS` with `config` (if any) and no inherited `SWITCHYARD_*` variables.
fn hub(config: Option<&Path>, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(HUB);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHYARD_")) {
        cmd.env_remove(k);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(args).envs(envs.iter().copied());
    cmd.output().expect("running the hub binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The value after `label` on the line that starts with it.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
        .trim()
        .to_owned()
}

/// A config file pointing the CLI at the test hub's database and master key.
fn config_for(hub: &TestHub, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("hub.yaml");
    std::fs::write(
        &path,
        format!(
            "data_dir: {data}\nsecrets:\n  master_key_file: {data}/master.key\nlog:\n  level: warn\n",
            data = hub.data_dir.display()
        ),
    )
    .expect("config");
    path
}

#[tokio::test]
async fn operator_commands_work_against_a_running_hub() {
    let th = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let config = config_for(&th, dir.path());

    let o = hub(Some(&config), &[], &["migrate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("migrations applied"));

    // apps create: prints the id and a key shown once; the key works on the running hub.
    let o = hub(Some(&config), &[], &["apps", "create", "--name", "cli-app"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let app: i64 = field(&out, "application ")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("app id");
    let key = field(&out, "api key:");
    let accounts = |key: String| {
        let http = th.http.clone();
        let url = th.url("/v1/accounts");
        async move {
            http.get(url)
                .header("Authorization", format!("apikey {key}"))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(accounts(key.clone()).await, 200);

    let o = hub(Some(&config), &[], &["apps", "list"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with(&format!("{app}\tactive\tcli-app"))),
        "{}",
        stdout(&o)
    );

    // keys create + revoke: the hub refuses the revoked key within the revocation bound (1 s),
    // though another process revoked it (SQLite: the hub polls the revocation generation).
    let o = hub(
        Some(&config),
        &[],
        &["keys", "create", "--app", &app.to_string()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let second = field(&stdout(&o), "api key:");
    assert_eq!(accounts(second.clone()).await, 200);
    let o = hub(
        Some(&config),
        &[],
        &["keys", "revoke", "--app", &app.to_string(), &key],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eventually!(
        accounts(key.clone()).await == 401,
        Duration::from_secs(1),
        "the revoked key to be refused within a second"
    );
    assert_eq!(accounts(second).await, 200, "the other key is untouched");
    let o = hub(
        Some(&config),
        &[],
        &["keys", "revoke", "--app", &app.to_string(), &key],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such key"), "{}", stderr(&o));
    let o = hub(Some(&config), &[], &["keys", "create", "--app", "999999"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such application"), "{}", stderr(&o));

    // meta-token create: the token opens the Meta API.
    let o = hub(
        Some(&config),
        &[],
        &["meta-token", "create", "--name", "ops"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = field(&stdout(&o), "meta token:");
    let r = th
        .http
        .get(th.url("/v1/meta/applications"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("meta");
    assert_eq!(r.status(), 200);
    // No secret is written to the logs.
    assert!(!stderr(&o).contains(&token));
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: not-an-address\n").expect("write");
    let o = hub(Some(&bad), &[], &["migrate"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("listen"), "{}", stderr(&o));

    std::fs::write(&bad, "limits:\n  max_upload_bytes: lots\n").expect("write");
    let o = hub(Some(&bad), &[], &["migrate"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("limits.max_upload_bytes"),
        "{}",
        stderr(&o)
    );

    std::fs::write(&bad, "no_such_setting: 1\n").expect("write");
    let o = hub(Some(&bad), &[], &["migrate"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no_such_setting"), "{}", stderr(&o));

    // An environment override is checked the same way and named by its config key.
    let ok = dir.path().join("ok.yaml");
    std::fs::write(&ok, format!("data_dir: {}\n", dir.path().display())).expect("write");
    let o = hub(
        Some(&ok),
        &[("SWITCHYARD_LIMITS__MAX_UPLOAD_BYTES", "-5")],
        &["migrate"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("limits.max_upload_bytes"),
        "{}",
        stderr(&o)
    );

    // A master key file readable by others is refused, naming the setting.
    let key = dir.path().join("master.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("key");
    std::fs::write(
        &ok,
        format!(
            "data_dir: {}\nsecrets:\n  master_key_file: {}\n",
            dir.path().display(),
            key.display()
        ),
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = hub(Some(&ok), &[], &["migrate"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("secrets.master_key_file") && stderr(&o).contains("chmod 600"),
        "{}",
        stderr(&o)
    );
    // A missing config file is a clear error too.
    let o = hub(Some(&dir.path().join("absent.yaml")), &[], &["migrate"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("absent.yaml"), "{}", stderr(&o));
}

/// `hub dev` twice on the same data dir: the same application, key and account, one of each.
#[tokio::test]
async fn hub_dev_is_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut first_key = None;
    for round in 0..2 {
        let port = e2e::servers::free_port();
        let mut child = tokio::process::Command::new(HUB)
            .args(["dev", "--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .env("SWITCHYARD_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("hub dev");
        let http = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{port}/readyz");
        assert_eventually!(
            http.get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200),
            Duration::from_secs(30),
            "hub dev to be ready"
        );
        let creds_path = data.join("dev-credentials.json");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&creds_path)
            .expect("credentials")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let creds: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&creds_path).expect("read"))
                .expect("json");
        let key = creds["api_key"].as_str().expect("key").to_owned();
        let accounts: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/v1/accounts"))
            .header("Authorization", format!("APIKey {key}"))
            .send()
            .await
            .expect("accounts")
            .json()
            .await
            .expect("json");
        assert_eq!(accounts["count"], 1, "round {round}: {accounts}");
        let apps: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/v1/meta/applications"))
            .bearer_auth(creds["meta_token"].as_str().expect("token"))
            .send()
            .await
            .expect("apps")
            .json()
            .await
            .expect("json");
        assert_eq!(apps["count"], 1, "round {round}: {apps}");
        match &first_key {
            None => first_key = Some(key.clone()),
            Some(k) => assert_eq!(k, &key, "the second run reuses the first key"),
        }
        // SIGTERM: a graceful stop.
        let pid = child.id().expect("pid");
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("hub dev stops on SIGTERM")
            .expect("wait");
        assert!(status.success(), "exit status {status}");
        // It printed what a developer needs: base URL, ids, the key and a curl to paste.
        let mut printed = String::new();
        use tokio::io::AsyncReadExt as _;
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut printed)
            .await
            .expect("read stdout");
        for needle in [
            format!("http://127.0.0.1:{port}"),
            key.clone(),
            "curl".to_owned(),
            creds["account_id"].to_string(),
        ] {
            assert!(printed.contains(&needle), "{needle:?} not in {printed:?}");
        }
    }
}

/// Every subcommand of `hub` (found by walking `-h`), and every flag and argument of each, has a
/// help line.
fn check_help(path: &mut Vec<String>, missing: &mut Vec<String>) {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("-h");
    let o = hub(None, &[], &args);
    assert!(o.status.success(), "hub {args:?}: {}", stderr(&o));
    let text = stdout(&o);
    let mut section = "";
    let mut subcommands = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end_matches(':');
            continue;
        }
        if !matches!(section, "Commands" | "Arguments" | "Options") {
            continue;
        }
        let entry = line.trim_start();
        match entry.split_once("  ") {
            Some((_, help)) if !help.trim().is_empty() => {}
            _ => missing.push(format!("hub {} {entry}", path.join(" "))),
        }
        if section == "Commands" {
            let name = entry.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                subcommands.push(name.to_owned());
            }
        }
    }
    for sub in subcommands {
        path.push(sub);
        check_help(path, missing);
        path.pop();
    }
}

#[tokio::test]
async fn every_flag_has_help_and_listings_are_scriptable() {
    let mut missing = Vec::new();
    check_help(&mut Vec::new(), &mut missing);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
    let o = hub(None, &[], &["spokes", "token", "create", "-h"]);
    let ttl = stdout(&o);
    assert!(
        ["--ttl", "1m", "30d", "90s", "bare number is"]
            .iter()
            .all(|n| ttl.contains(n)),
        "--ttl documents its format and limits: {ttl}"
    );

    let th = TestHub::start().await.expect("hub");
    let dir = tempfile::tempdir().expect("tmp");
    let config = config_for(&th, dir.path());

    // Empty listings say so; `--json` prints an empty array.
    let o = hub(Some(&config), &[], &["spokes", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "no spokes");
    let o = hub(Some(&config), &[], &["spokes", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v, serde_json::json!([]));

    // A control character in a new application's name is refused, naming the problem.
    let o = hub(
        Some(&config),
        &[],
        &["apps", "create", "--name", "bad\u{1b}[2Jname"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("control characters"), "{}", stderr(&o));
    // One stored before names were checked is printed escaped, never raw.
    let evil = th
        .state
        .db
        .create_app("evil\u{1b}[31mred\u{202e}", "", false, 1)
        .await
        .expect("app");
    let o = hub(Some(&config), &[], &["apps", "list"]);
    let text = stdout(&o);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text:?}"
    );
    assert!(
        text.contains(&format!(
            "{}\tactive\tevil\\u{{1b}}[31mred\\u{{202e}}",
            evil.id
        )),
        "{text}"
    );
    let o = hub(Some(&config), &[], &["apps", "list", "--json"]);
    assert!(!stdout(&o).contains('\u{1b}'));
    let apps: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let apps = apps.as_array().expect("array");
    assert_eq!(apps.len(), 2, "{apps:?}");
    assert_eq!(
        apps[1]["name"], "evil\u{1b}[31mred\u{202e}",
        "JSON keeps the name, escaped"
    );

    // keys list: hints only, lines or JSON.
    let app = th.creds.application_id.to_string();
    let o = hub(Some(&config), &[], &["keys", "list", "--app", &app]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(!stdout(&o).contains(&th.creds.api_key));
    let o = hub(
        Some(&config),
        &[],
        &["keys", "list", "--app", &app, "--json"],
    );
    let keys: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert!(keys[0]["key_hint"].is_string() && keys[0].get("key").is_none());
    let o = hub(
        Some(&config),
        &[],
        &["keys", "list", "--app", &evil.id.to_string()],
    );
    assert_eq!(stdout(&o).trim(), "no keys");
}
