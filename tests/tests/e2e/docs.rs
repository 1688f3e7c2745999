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

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let cmd = ".ci/test.sh";
    assert!(readme.contains(cmd), "README shows the test command");
    assert!(ci.contains(cmd), ".ci/run calls it");
}
