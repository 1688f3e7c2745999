//! Spoke enrollment and the control plane with real `spoke` processes: join strings, single
//! use under concurrency, expiry, CA pinning, unreachable hubs, health, version mismatch and
//! revocation.

use crate::spokes::{enroll, join_token, spoke_view, text, wait_healthy, SpokeProc};
use e2e::TestHub;
use shared::join::JoinString;
use std::time::Duration;

#[tokio::test]
async fn enroll_run_and_revoke() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let join = join_token(&hub, "local").await;
    assert!(join.starts_with("SYJ1-"));

    // A clean enrollment: key made locally, mode 0600, config written, hub list printed.
    let dir = root.path().join("a");
    let o = enroll(
        &join,
        &dir,
        &["--name", "spoke-a", "--advertise", "127.0.0.1:9443"],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("enrolled spoke") && out.contains("spoke-a") && out.contains("local"),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("spoke.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cfg = std::fs::read_to_string(dir.join("spoke.yaml")).expect("config");
    assert!(
        cfg.contains(hub.state.network.advertise().expect("quic")),
        "{cfg}"
    );
    // The private key never went to the hub: the hub stores only the certificate's fingerprint.
    let key = std::fs::read_to_string(dir.join("spoke.key")).expect("key");
    assert!(!key.is_empty());
    let id: i64 = out
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("id");

    // The same data dir again: refused before anything is sent.
    let o = enroll(&join, &dir, &[]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already holds an enrolled spoke"),
        "{}",
        text(&o.stderr)
    );
    // The same token again: single use.
    let o = enroll(&join, &root.path().join("b"), &[]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already used"),
        "{}",
        text(&o.stderr)
    );
    assert!(!root.path().join("b/spoke.yaml").exists());

    // A wrong CA pin: the spoke refuses the hub.
    let mut j = JoinString::parse(&join_token(&hub, "local").await).expect("parse");
    let good_pin = j.ca_fingerprint.clone();
    j.ca_fingerprint = "00".repeat(32);
    let o = enroll(&j.encode(), &root.path().join("c"), &[]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("pinned fingerprint"),
        "{}",
        text(&o.stderr)
    );
    // ... and the token was not consumed by that attempt: with the right pin it still works.
    j.ca_fingerprint = good_pin;
    let o = enroll(&j.encode(), &root.path().join("c"), &[]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));

    // An unreachable hub: a clear error within the timeout.
    let mut j = JoinString::parse(&join_token(&hub, "local").await).expect("parse");
    let free = e2e::servers::free_port();
    j.quic = format!("127.0.0.1:{free}");
    let o = enroll(&j.encode(), &root.path().join("d"), &["--timeout", "2"]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("cannot reach the hub"),
        "{}",
        text(&o.stderr)
    );

    // An expired token.
    let secret = "js_expired-secret-for-test";
    hub.state
        .db
        .create_join_token(&hub::db::JoinTokenRecord {
            id: "jt_expired".into(),
            secret_hash: shared::auth::hash_token(secret).to_vec(),
            region: "local".into(),
            name: None,
            expires_ms: hub::state::now_ms() - 1000,
            used_ms: None,
            spoke_id: None,
            created_ms: hub::state::now_ms() - 10_000,
            max_uses: 1,
            uses: 0,
            revoked_ms: None,
        })
        .await
        .expect("token row");
    let mut j = JoinString::parse(&join).expect("parse");
    j.token_id = "jt_expired".into();
    j.secret = shared::proto::Redacted(secret.into());
    let o = enroll(&j.encode(), &root.path().join("e"), &[]).await;
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("expired"), "{}", text(&o.stderr));
    // A wrong secret for a real token id looks like an unknown token (and does not burn it).
    let mut j = JoinString::parse(&join_token(&hub, "local").await).expect("parse");
    let real_secret = j.secret.clone();
    j.secret = shared::proto::Redacted("js_guess".into());
    let o = enroll(&j.encode(), &root.path().join("f"), &[]).await;
    assert!(
        text(&o.stderr).contains("does not exist"),
        "{}",
        text(&o.stderr)
    );
    j.secret = real_secret;
    let o = enroll(&j.encode(), &root.path().join("f"), &[]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Run: the spoke dials out, says hello and heartbeats; the hub shows it healthy.
    let mut spoke = SpokeProc::run(dir.clone(), id, &[]);
    wait_healthy(&hub, id).await;
    let v = spoke_view(&hub, id).await;
    assert_eq!(v["name"], "spoke-a");
    assert_eq!(v["advertise"], "127.0.0.1:9443");
    assert!(v["status"]["rtt_us"].as_u64().is_some(), "{v}");
    let list: serde_json::Value = hub
        .http
        .get(hub.url("/v1/network/spokes"))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(list["count"].as_u64().expect("count") >= 3, "{list}");
    // The network API needs the Meta token.
    let r = hub
        .req(reqwest::Method::GET, &hub.url("/v1/network/spokes"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 401);

    // Revocation closes the connection at once; the spoke stops; a restart is refused.
    let r = hub
        .http
        .delete(hub.url(&format!("/v1/network/spokes/{id}")))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    let status = spoke.exit_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(spoke.log_text().contains("revoked"), "{}", spoke.log_text());
    let v = spoke_view(&hub, id).await;
    assert!(v["revoked"].is_string() && v["connected"] == false, "{v}");
    let mut again = SpokeProc::run(dir, id, &[]);
    let status = again.exit_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(again.log_text().contains("revoked"), "{}", again.log_text());
}

/// Many spokes race for one token: exactly one wins.
#[tokio::test]
async fn a_token_is_single_use_under_concurrency() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let join = join_token(&hub, "local").await;
    let attempts: Vec<_> = (0..6)
        .map(|i| {
            let join = join.clone();
            let dir = root.path().join(format!("s{i}"));
            tokio::spawn(async move { enroll(&join, &dir, &[]).await })
        })
        .collect();
    let mut wins = 0;
    for a in attempts {
        let o = a.await.expect("join");
        if o.status.success() {
            wins += 1;
        } else {
            assert!(
                text(&o.stderr).contains("already used"),
                "{}",
                text(&o.stderr)
            );
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(hub.state.db.list_spokes().await.expect("spokes").len(), 1);
}

/// A spoke speaking another protocol version is refused with a message naming both versions,
/// and stops instead of retrying forever.
#[tokio::test]
async fn protocol_version_mismatch_is_a_clear_error() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let mut s =
        SpokeProc::start_with(&hub, root.path(), "old", &["--protocol-version", "99"]).await;
    let status = s.exit_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = s.log_text();
    assert!(
        log.contains("protocol version mismatch") && log.contains("99"),
        "{log}"
    );
    assert!(hub.state.network.registry.connected_ids().is_empty());
}

/// Operators use the CLI for tokens, listing and revocation.
#[tokio::test]
async fn hub_cli_manages_spokes() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let cfg = root.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {d}\nsecrets:\n  master_key_file: {d}/master.key\nlog:\n  level: warn\n\
             network:\n  quic_listen: {q}\n",
            d = hub.data_dir.display(),
            q = hub.state.network.advertise().expect("quic")
        ),
    )
    .expect("cfg");
    let hub_cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_e2e-hub"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("hub cli")
    };
    let o = hub_cli(&[
        "spokes", "token", "create", "--region", "local", "--ttl", "1h",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let join = text(&o.stdout)
        .lines()
        .find(|l| l.starts_with("SYJ1-"))
        .expect("join string line")
        .to_owned();
    // The join string names the hub's QUIC endpoint.
    let parsed = JoinString::parse(&join).expect("join");
    assert_eq!(Some(parsed.quic.as_str()), hub.state.network.advertise());
    let o = hub_cli(&[
        "spokes", "token", "create", "--region", "local", "--ttl", "5y",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("unit"), "{}", text(&o.stderr));
    let o = hub_cli(&["spokes", "token", "create", "--region", "bad region!"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("region"), "{}", text(&o.stderr));

    let o = enroll(&join, &root.path().join("s"), &["--name", "cli-spoke"]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id: i64 = text(&o.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("id");
    let mut spoke = SpokeProc::run(root.path().join("s"), id, &[]);
    wait_healthy(&hub, id).await;
    let o = hub_cli(&["spokes", "list"]);
    assert!(text(&o.stdout).contains("cli-spoke"), "{}", text(&o.stdout));
    // Revocation by another process reaches the hub's open connection within a second or so.
    let o = hub_cli(&["spokes", "revoke", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let status = spoke.exit_within(Duration::from_secs(10)).await;
    assert!(!status.success());
    let o = hub_cli(&["spokes", "revoke", "424242"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no spoke"), "{}", text(&o.stderr));
}
