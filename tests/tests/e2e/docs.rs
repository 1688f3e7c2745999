//! The example configs parse, and the README's commands are the ones CI runs.

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

#[test]
fn example_hub_config_parses() {
    let cfg = hub::config::Config::load(Some(&repo().join("config/hub.yaml")), Vec::new())
        .expect("config/hub.yaml parses");
    assert_eq!(cfg.database.max_connections, 16);
}

/// The TLS examples parse, name what they configure, and `SWITCHYARD_TLS__*` overrides them.
#[test]
fn example_tls_configs_parse() {
    let files = repo().join("config/hub-tls-files.yaml");
    let cfg = hub::config::Config::load(Some(&files), Vec::new()).expect("hub-tls-files.yaml");
    assert!(cfg.tls.enabled() && cfg.tls.acme.is_none());
    assert_eq!(cfg.tls.redirect_listen.map(|a| a.port()), Some(80));
    let cfg = hub::config::Config::load(
        Some(&files),
        vec![(
            "SWITCHYARD_TLS__CERT_FILE".to_owned(),
            "/srv/other.pem".to_owned(),
        )],
    )
    .expect("override");
    assert_eq!(
        cfg.tls.cert_file.as_deref(),
        Some(Path::new("/srv/other.pem"))
    );
    let acme = repo().join("config/hub-tls-acme.yaml");
    let cfg = hub::config::Config::load(Some(&acme), Vec::new()).expect("hub-tls-acme.yaml");
    let a = cfg.tls.acme.as_ref().expect("acme");
    assert_eq!(a.renew_before.0.as_secs(), 30 * 86_400);
    assert_eq!(
        cfg.acme_domain().as_deref(),
        Some("api.eu-west.example.com")
    );
    let e = hub::config::Config::load(
        Some(&acme),
        vec![(
            "SWITCHYARD_TLS__REDIRECT_LISTEN".to_owned(),
            "null".to_owned(),
        )],
    )
    .expect_err("http-01 without the redirect listener");
    assert!(e.to_string().contains("tls.redirect_listen"), "{e}");
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let cmd = ".ci/test.sh";
    assert!(readme.contains(cmd), "README shows the test command");
    assert!(ci.contains(cmd), ".ci/run calls it");
}
