//! `tunnel status` as a user runs it (the binary, against a control socket served in-process):
//! it finds the socket from a config without touching the keys, and a user who may not connect
//! is told it is a permission problem.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use tunnel::control::{self, ControlSocket, Status};

const TUNNEL: &str = env!("CARGO_BIN_EXE_e2e-tunnel");
const KEY: &str = "mDc1GiL1qYc2Ky/cf6zBi7sCZZy1b0LLMuAvOq28R3A=";

fn status() -> Status {
    Status {
        interface: "wg-test".into(),
        public_key: "pk".into(),
        listen_port: 51820,
        offload: false,
        uptime_secs: 1.0,
        dropped: Default::default(),
        peers: Vec::new(),
    }
}

/// A fresh control socket at `path` (answered by [`run_against`]).
fn serve(rt: &tokio::runtime::Runtime, path: &Path) -> ControlSocket {
    rt.block_on(ControlSocket::bind(path)).expect("bind")
}

async fn answer_one(sock: &ControlSocket) {
    let accepted = tokio::time::timeout(Duration::from_secs(10), sock.listener.accept()).await;
    if let Ok(Ok((stream, _))) = accepted {
        control::answer(stream, status()).await;
    }
}

/// Runs `tunnel ARGS` (as `uid` when given) on a blocking thread while `sock` answers once.
fn run_against(
    rt: &tokio::runtime::Runtime,
    sock: &ControlSocket,
    args: &[&str],
    uid: Option<u32>,
) -> Output {
    run_program(rt, sock, Path::new(TUNNEL), args, uid)
}

/// [`run_against`] with the binary at `program`.
fn run_program(
    rt: &tokio::runtime::Runtime,
    sock: &ControlSocket,
    program: &Path,
    args: &[&str],
    uid: Option<u32>,
) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("SWITCHYARD_TUNNEL_CONFIG");
    if let Some(u) = uid {
        cmd.uid(u).gid(u);
    }
    rt.block_on(async {
        let child = tokio::task::spawn_blocking(move || cmd.output().expect("run tunnel"));
        tokio::select! {
            out = child => out.expect("join"),
            () = async { answer_one(sock).await; std::future::pending().await } => unreachable!(),
        }
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("rt")
}

#[test]
fn status_with_a_config_reads_no_key() {
    let rt = rt();
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("ctl.sock");
    let sock = serve(&rt, &socket);
    // The key file is missing and the config would be refused by `up` (a world-readable
    // inline preshared key): `status` only needs the socket's path.
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            "interface:\n  name: wg-test\n  private_key_file: missing.key\n  \
             addresses: [10.255.0.1/24]\n  control_socket: ctl.sock\n\
             peers:\n  - public_key: HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\n    \
             preshared_key: {KEY}\n"
        ),
    )
    .expect("write");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = config.to_str().expect("utf-8");
    let out = run_against(&rt, &sock, &["status", "--json", "--config", cfg], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status failed: {stderr}");
    let got: Status = serde_json::from_slice(&out.stdout).expect("json status");
    assert_eq!(got, status());
}

/// Run as root: the socket is root's (0600); `nobody` asking for the status is told it lacks
/// the permission, not that the gateway may be down.
#[test]
fn status_without_permission_says_so() {
    let rt = rt();
    let dir = tempfile::tempdir().expect("dir");
    // The directory is open to all; only the socket's own mode keeps others out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("ctl.sock");
    let sock = serve(&rt, &socket);
    let path = socket.to_str().expect("utf-8");
    // `nobody` runs a copy from that open directory: the build tree may sit below a folder
    // only root may enter (a clone made in a `mktemp -d` directory, say).
    let bin = dir.path().join("tunnel");
    std::fs::copy(TUNNEL, &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = run_program(&rt, &sock, &bin, &["status", "--socket", path], Some(65534));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody got the status: {stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains("is the gateway up"), "{stderr}");
    // The gateway's own user gets it.
    let out = run_against(&rt, &sock, &["status", "--socket", path], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
