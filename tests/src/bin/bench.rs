//! Benchmarks, each against its baseline in the same run (medians of several rounds):
//!
//! - `metadata`: GET file metadata (fs account) with `wrk`, hub on SQLite and on PostgreSQL,
//!   against a bare axum handler.
//! - `transfer`: 2 GiB download and upload through the hub against nginx serving / accepting
//!   the same file, with the hub's peak RSS sampled throughout.
//!
//! - `offload`: copy a 2 GiB object between two S3 accounts (two moto servers) through a
//!   spoke, against `rclone copyto` between the same two, with the bytes the hub process moved
//!   (its read/write syscalls, `/proc/PID/io`) and the spoke's peak and idle RSS.
//!
//! - `regions`: database-bound reads through a hub reading its region's replica against the
//!   same region's hub with only the remote primary and the primary's own region's hub, and
//!   write-then-read against one RTT plus the replication lag (`bench_regions`).
//!
//! - `uploads`: a 2 GiB file sent through an upload session (4 parts at a time) into S3
//!   (`s3s-fs`) against `rclone copyto` of the same file to the same server, and the same file
//!   uploaded from a URL (nginx on loopback) against `rclone copyurl`, with the hub's peak RSS.
//!
//! - `budgets`: the cost of the shared provider budgets: one admission through Redis against
//!   one in the process, and metadata GETs through a hub with and without them
//!   (`bench_budgets`).
//!
//! - `detect`: a detector poll of an unchanged S3 bucket (moto) at two sizes against `rclone
//!   lsjson -R` (`bench_detect`).
//!
//! Run: `cargo build --release -p hub -p spoke -p e2e && target/release/bench all` (as root, on a quiet
//! machine). The hub runs as its own process (`hub dev`), from the same directory as this binary.

#![allow(clippy::print_stdout)]

use anyhow::{bail, Context as _};
use e2e::servers::{free_port, Postgres};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve-bare") => serve_bare(args.get(2).context("port")?.parse()?),
        Some("linkemu") => e2e::bench_linkemu::run(args.get(2).map(String::as_str)),
        Some("lab") => e2e::bench_lab::run(
            &e2e::terraform_lab::Bins::beside_current_exe()?,
            args.get(2).map_or(Ok(ROUNDS), |n| n.parse())?,
        ),
        Some("regions") => {
            tokio::runtime::Runtime::new()?.block_on(e2e::bench_regions::run(&sibling("hub")?))
        }
        Some("webhooks") => tokio::runtime::Runtime::new()?
            .block_on(e2e::bench_webhooks::run(args.get(2).map_or(Ok(ROUNDS), |n| n.parse())?)),
        Some("detect") => {
            let sizes = args
                .get(2)
                .map_or("10000,100000", String::as_str)
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<usize>, _>>()
                .context("sizes: N1,N2,... (objects)")?;
            tokio::runtime::Runtime::new()?.block_on(e2e::bench_detect::run(&sizes))
        }
        Some("dns") => {
            tokio::runtime::Runtime::new()?.block_on(e2e::bench_dns::run(&sibling("hub")?))
        }
        Some("tunnel") => tokio::runtime::Runtime::new()?
            .block_on(e2e::bench_tunnel::throughput(&sibling("tunnel")?)),
        Some("tunnel-soak") => {
            let minutes = args.get(2).map_or(Ok(7), |m| m.parse())?;
            tokio::runtime::Runtime::new()?
                .block_on(e2e::bench_tunnel::soak(&sibling("tunnel")?, minutes))
        }
        Some("uploads") => tokio::runtime::Runtime::new()?.block_on(uploads()),
        Some("wan") => {
            // bench wan [ROUNDS] [SIZE_MIB] [LIMIT_SECS] [CASES, e.g. 0,1,2] [CONGESTION, e.g. cubic,bbr]
            //   [OFFLOAD k=v,...] [BASELINES yes|no]
            let num = |i: usize, d: u64| args.get(i).map_or(Ok(d), |v| v.parse::<u64>());
            let list = |i: usize, d: &str| -> Vec<String> {
                args.get(i)
                    .map_or(d, String::as_str)
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            };
            let b = e2e::bench_wan::WanBench {
                rounds: num(2, 3)? as usize,
                size: num(3, 1024)? << 20,
                limit: std::time::Duration::from_secs(num(4, 60)?),
                cases: list(5, "0,1,2")
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<Vec<usize>, _>>()
                    .ok()
                    .filter(|c| !c.is_empty() && c.iter().all(|&i| i < e2e::bench_wan::CASES.len()))
                    .context("cases: a list of 0 (100 ms), 1 (100 ms, 0.1 %), 2 (200 ms, 1 %), 3 (no WAN)")?,
                congestion: list(6, "cubic,bbr"),
                // e.g. "part_concurrency=8,part_size=33554432"
                offload: list(7, "")
                    .iter()
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| format!("  {}\n", kv.replacen('=', ": ", 1)))
                    .collect(),
                baselines: args.get(8).is_none_or(|v| v != "no"),
            };
            tokio::runtime::Runtime::new()?
                .block_on(e2e::bench_wan::run(&sibling("spoke")?, b))
        }
        Some("budgets") => tokio::runtime::Runtime::new()?.block_on(e2e::bench_budgets::run()),
        Some(which @ ("metadata" | "transfer" | "offload" | "all")) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                if matches!(which, "metadata" | "all") {
                    metadata().await?;
                }
                if matches!(which, "transfer" | "all") {
                    transfer().await?;
                }
                if matches!(which, "offload" | "all") {
                    offload().await?;
                }
                anyhow::Ok(())
            })
        }
        _ => bail!(
            "usage: bench metadata|transfer|offload|all|uploads|budgets|wan [ROUNDS] [SIZE_MIB] [LIMIT_SECS] [CASES] [CONGESTION] [OFFLOAD] [BASELINES]|detect [N1,N2]|dns|regions|webhooks [ROUNDS]|linkemu|lab [ROUNDS]|tunnel|tunnel-soak [MINUTES]"
        ),
    }
}

/// The baseline: a bare axum handler answering a small JSON document.
fn serve_bare(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let app = axum_bare::router();
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum_bare::serve(l, app).await
    })
}

mod axum_bare {
    //! The bare axum baseline server.
    pub fn router() -> hub_axum::Router {
        hub_axum::Router::new().route(
            "/meta",
            hub_axum::routing::get(|| async {
                hub_axum::Json(serde_json::json!({"id": "Fabc", "name": "file.bin", "type": "file", "size": 4096}))
            }),
        )
    }
    pub async fn serve(l: tokio::net::TcpListener, app: hub_axum::Router) -> anyhow::Result<()> {
        hub_axum::serve(l, app).await?;
        Ok(())
    }
    use axum as hub_axum;
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join(name);
    anyhow::ensure!(
        p.exists(),
        "{} not built: cargo build --release -p hub",
        p.display()
    );
    Ok(p)
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("port {port} did not open")
}

struct DevHub {
    proc: Proc,
    base: String,
    key: String,
    account: i64,
    app: i64,
    dir: PathBuf,
}

async fn start_hub(dir: &Path, db_url: Option<&str>) -> anyhow::Result<DevHub> {
    let port = free_port();
    let mut cmd = Command::new(sibling("hub")?);
    cmd.args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--port", &port.to_string()]);
    cmd.env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(u) = db_url {
        cmd.env("SWITCHYARD_DATABASE__URL", u);
    }
    let proc = Proc(cmd.spawn()?);
    wait_port(port).await?;
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("dev-credentials.json"))?)?;
    Ok(DevHub {
        proc,
        base: format!("http://127.0.0.1:{port}"),
        key: creds["api_key"].as_str().context("key")?.to_owned(),
        account: creds["account_id"].as_i64().context("account")?,
        app: creds["application_id"].as_i64().context("application")?,
        dir: dir.to_owned(),
    })
}

struct WrkResult {
    rps: f64,
    p99_ms: f64,
}

fn wrk(url: &str, auth: Option<&str>) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", "-d8s", "--latency"]);
    if let Some(a) = auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("wrk output")?
        .parse()?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("wrk latency")?;
    let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
    anyhow::ensure!(!non2xx, "wrk saw errors:\n{text}");
    Ok(WrkResult {
        rps,
        p99_ms: parse_ms(p99),
    })
}

fn parse_ms(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => f64::NAN,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn metadata() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = Postgres::start().await?;
    let sqlite_hub = start_hub(&tmp.path().join("sqlite"), None).await?;
    let pg_hub = start_hub(&tmp.path().join("pg"), Some(&pg.url())).await?;
    let bare_port = free_port();
    let _bare = Proc(
        Command::new(std::env::current_exe()?)
            .args(["serve-bare", &bare_port.to_string()])
            .spawn()?,
    );
    wait_port(bare_port).await?;
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for h in [&sqlite_hub, &pg_hub] {
        let r = http
            .post(format!(
                "{}/v1/accounts/{}/storage/files",
                h.base, h.account
            ))
            .header("Authorization", format!("APIKey {}", h.key))
            .header(
                "X-Kloudless-Metadata",
                r#"{"name":"bench.bin","parent_id":"root"}"#,
            )
            .body(vec![7u8; 4096])
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "upload: {}", r.status());
        let v: serde_json::Value = r.json().await?;
        urls.push(format!(
            "{}/v1/accounts/{}/storage/files/{}",
            h.base,
            h.account,
            v["id"].as_str().context("id")?
        ));
    }
    let bare_url = format!("http://127.0.0.1:{bare_port}/meta");
    let (mut s_rps, mut s_p99, mut p_rps, mut p_p99, mut b_rps) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let b = wrk(&bare_url, None)?;
        let s = wrk(&urls[0], Some(&format!("APIKey {}", sqlite_hub.key)))?;
        let p = wrk(&urls[1], Some(&format!("APIKey {}", pg_hub.key)))?;
        println!(
            "round {round}: bare {:.0} req/s | sqlite {:.0} req/s p99 {:.2} ms | postgres {:.0} req/s p99 {:.2} ms",
            b.rps, s.rps, s.p99_ms, p.rps, p.p99_ms
        );
        b_rps.push(b.rps);
        s_rps.push(s.rps);
        s_p99.push(s.p99_ms);
        p_rps.push(p.rps);
        p_p99.push(p.p99_ms);
    }
    let (b, s, p) = (median(b_rps), median(s_rps), median(p_rps));
    println!(
        "metadata (median of {ROUNDS}): bare axum {b:.0} req/s; hub/sqlite {s:.0} req/s (p99 {:.2} ms, {:.2}x bare); \
         hub/postgres {p:.0} req/s (p99 {:.2} ms, {:.2}x bare)",
        median(s_p99),
        s / b,
        median(p_p99),
        p / b
    );
    drop(pg_hub);
    drop(sqlite_hub);
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs a curl command, sampling `pid`'s RSS; returns (seconds, peak RSS KiB).
fn timed_curl(args: &[&str], pid: u32) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let mut child = Command::new("curl")
        .args(["-sS", "-f", "-o", "/dev/null"])
        .args(args)
        .spawn()?;
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kib(pid));
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "curl {args:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((start.elapsed().as_secs_f64(), peak))
}

async fn transfer() -> anyhow::Result<()> {
    const SIZE: u64 = 2 * 1024 * 1024 * 1024;
    let tmp = tempfile::tempdir()?;
    let hub = start_hub(&tmp.path().join("hub"), None).await?;
    // The dev account's root: its application's space under the allowed root `files`.
    let files = hub.dir.join("files").join(format!("app-{}", hub.app));
    let src = files.join("big.bin");
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&src)?);
        let block = e2e::pattern(1 << 20, 5);
        for _ in 0..(SIZE >> 20) {
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let http = reqwest::Client::new();
    let list: serde_json::Value = http
        .get(format!(
            "{}/v1/accounts/{}/storage/search?q=big.bin",
            hub.base, hub.account
        ))
        .header("Authorization", format!("APIKey {}", hub.key))
        .send()
        .await?
        .json()
        .await?;
    let id = list["objects"][0]["id"]
        .as_str()
        .context("file id")?
        .to_owned();

    // nginx: serves the same directory and accepts PUT into another.
    let ng = tmp.path().join("nginx");
    std::fs::create_dir_all(ng.join("put"))?;
    let port = free_port();
    std::fs::write(
        ng.join("nginx.conf"),
        format!(
            "user root; daemon off; worker_processes 1; error_log {ng}/error.log; pid {ng}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; client_max_body_size 0; client_body_temp_path {ng}/tmp;\n\
               server {{ listen 127.0.0.1:{port};\n\
                 location /files/ {{ alias {files}/; }}\n\
                 location /put/ {{ alias {ng}/put/; dav_methods PUT; create_full_put_path on; }} }} }}\n",
            ng = ng.display(),
            files = files.display()
        ),
    )?;
    let _nginx = Proc(
        Command::new("nginx")
            .args(["-c"])
            .arg(ng.join("nginx.conf"))
            .args(["-p"])
            .arg(&ng)
            .spawn()
            .context("nginx (apt-get install nginx-light)")?,
    );
    wait_port(port).await?;
    let auth = format!("Authorization: APIKey {}", hub.key);
    let pid = hub.proc.0.id();
    let gib = SIZE as f64 / (1u64 << 30) as f64;
    let (mut dl, mut ul, mut ndl, mut nul) = (vec![], vec![], vec![], vec![]);
    let mut peak = 0;
    let src_s = src.to_string_lossy().into_owned();
    for round in 0..ROUNDS {
        let (t_n, _) = timed_curl(&[&format!("http://127.0.0.1:{port}/files/big.bin")], pid)?;
        let (t_h, p1) = timed_curl(
            &[
                "-H",
                &auth,
                &format!(
                    "{}/v1/accounts/{}/storage/files/{id}/contents",
                    hub.base, hub.account
                ),
            ],
            pid,
        )?;
        let (t_nu, _) = timed_curl(
            &[
                "-T",
                &src_s,
                &format!("http://127.0.0.1:{port}/put/up-{round}.bin"),
            ],
            pid,
        )?;
        let (t_hu, p2) = timed_curl(
            &[
                "-X",
                "POST",
                "-T",
                &src_s,
                "-H",
                &auth,
                "-H",
                "Expect:",
                "-H",
                &format!(
                    "X-Kloudless-Metadata: {{\"name\":\"up-{round}.bin\",\"parent_id\":\"root\"}}"
                ),
                &format!("{}/v1/accounts/{}/storage/files", hub.base, hub.account),
            ],
            pid,
        )?;
        peak = peak.max(p1).max(p2);
        println!(
            "round {round}: download hub {:.2} GiB/s nginx {:.2} GiB/s | upload hub {:.2} GiB/s nginx {:.2} GiB/s | hub peak RSS {} MiB",
            gib / t_h, gib / t_n, gib / t_hu, gib / t_nu, peak / 1024
        );
        dl.push(gib / t_h);
        ndl.push(gib / t_n);
        ul.push(gib / t_hu);
        nul.push(gib / t_nu);
        std::fs::remove_file(files.join(format!("up-{round}.bin"))).ok();
        std::fs::remove_file(ng.join(format!("put/up-{round}.bin"))).ok();
    }
    let (d, nd, u, nu) = (median(dl), median(ndl), median(ul), median(nul));
    println!(
        "transfer 2 GiB (median of {ROUNDS}): download hub {d:.2} GiB/s vs nginx {nd:.2} GiB/s ({:.2}x); \
         upload hub {u:.2} GiB/s vs nginx {nu:.2} GiB/s ({:.2}x); hub peak RSS {} MiB",
        d / nd,
        u / nu,
        peak / 1024
    );
    Ok(())
}

/// `(rchar + wchar)` of a process: every byte it passed through read/write syscalls, sockets
/// included.
fn io_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// An S3 API server over a directory (`s3s-fs`, `cargo install s3s-fs --features binary`):
/// a bucket is a directory, so the 2 GiB source is written straight to disk.
struct S3Fs {
    _proc: Proc,
    port: u16,
    root: PathBuf,
}

impl S3Fs {
    async fn start(root: PathBuf) -> anyhow::Result<S3Fs> {
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let proc = Proc(
            Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", "bench", "--secret-key", "bench-secret"])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("s3s-fs (cargo install s3s-fs@0.14.1 --features binary)")?,
        );
        wait_port(port).await?;
        Ok(S3Fs {
            _proc: proc,
            port,
            root,
        })
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

async fn offload() -> anyhow::Result<()> {
    const SIZE: u64 = 2 << 30;
    const MIB: u64 = 1 << 20;
    let tmp = tempfile::Builder::new()
        .prefix("switchyard-bench-")
        .tempdir_in("/var/tmp")?;
    let a = S3Fs::start(tmp.path().join("a")).await?;
    let b = S3Fs::start(tmp.path().join("b")).await?;
    std::fs::create_dir_all(a.root.join("src"))?;
    std::fs::create_dir_all(b.root.join("dst"))?;
    let creds = |s: &S3Fs, bucket: &str| {
        serde_json::json!({"bucket": bucket, "endpoint": s.endpoint(), "region": "us-east-1",
            "access_key_id": "bench", "secret_access_key": "bench-secret"})
    };
    let (ca, cb) = (creds(&a, "src"), creds(&b, "dst"));
    // Through the S3 API, so the server records the object's ETag (s3s-fs otherwise hashes the
    // whole file on every ranged GET).
    println!("offload: writing the 2 GiB source object");
    {
        use futures::StreamExt as _;
        use shared::storage::{ConnectOptions, Connector, ServiceConfig, StoragePath};
        // The benchmark's S3 server is on loopback: no SSRF guard.
        let opts = ConnectOptions {
            egress: e2e::loopback_egress(),
            ..ConnectOptions::default()
        };
        let src = Connector::connect(&ServiceConfig::from_parts("s3", ca.clone())?, &opts).await?;
        let stream = futures::stream::iter(0..SIZE / MIB)
            .map(|i| Ok::<_, String>(bytes::Bytes::from(e2e::pattern(MIB as usize, i))));
        src.write(&StoragePath::parse("big.bin")?, Box::pin(stream))
            .await?;
    }
    let hub = start_hub(&tmp.path().join("hub"), None).await?;
    let dev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hub.dir.join("dev-credentials.json"))?)?;
    let meta = dev["meta_token"].as_str().context("meta")?.to_owned();
    let http = reqwest::Client::new();
    let auth = format!("APIKey {}", hub.key);
    let mut accounts = Vec::new();
    for c in [&ca, &cb] {
        let v: serde_json::Value = http
            .post(format!("{}/v1/accounts", hub.base))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"service": "s3", "account": "bench", "credentials": c}))
            .send()
            .await?
            .json()
            .await?;
        accounts.push(v["id"].as_i64().context("account id")?);
    }
    let token: serde_json::Value = http
        .post(format!("{}/v1/network/spokes/tokens", hub.base))
        .bearer_auth(&meta)
        .json(&serde_json::json!({"region": "local"}))
        .send()
        .await?
        .json()
        .await?;
    let spoke_dir = tmp.path().join("spoke");
    let st = Command::new(sibling("spoke")?)
        .arg("enroll")
        .arg(token["join"].as_str().context("join")?)
        .arg("--data-dir")
        .arg(&spoke_dir)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "spoke enroll failed");
    let spoke = Proc(
        Command::new(sibling("spoke")?)
            .arg("run")
            .arg("--data-dir")
            .arg(&spoke_dir)
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let spoke_pid = spoke.0.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = status_kib(spoke_pid, "VmRSS:");
    let list: serde_json::Value = http
        .get(format!(
            "{}/v1/accounts/{}/storage/folders/root/contents",
            hub.base, accounts[0]
        ))
        .header("Authorization", &auth)
        .send()
        .await?
        .json()
        .await?;
    let file = list["objects"][0]["id"]
        .as_str()
        .context("file id")?
        .to_owned();
    let rclone_env = |name: &str, s: &S3Fs| -> Vec<(String, String)> {
        let p = format!("RCLONE_CONFIG_{}_", name.to_uppercase());
        vec![
            (format!("{p}TYPE"), "s3".into()),
            (format!("{p}PROVIDER"), "Other".into()),
            (format!("{p}ENDPOINT"), s.endpoint()),
            (format!("{p}ACCESS_KEY_ID"), "bench".into()),
            (format!("{p}SECRET_ACCESS_KEY"), "bench-secret".into()),
            (format!("{p}REGION"), "us-east-1".into()),
        ]
    };
    let gib = SIZE as f64 / (1u64 << 30) as f64;
    let (mut ours, mut theirs, mut hub_share) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        // Ours: a cross-account copy the hub offloads to the spoke.
        let hub_io = io_bytes(hub.proc.0.id());
        let t0 = Instant::now();
        let v: serde_json::Value = http
            .post(format!(
                "{}/v1/accounts/{}/storage/files/{file}/copy",
                hub.base, accounts[0]
            ))
            .header("Authorization", &auth)
            .header("X-Kloudless-Async", "true")
            .json(&serde_json::json!({"account": accounts[1], "parent_id": "root", "name": "ours.bin"}))
            .send()
            .await?
            .json()
            .await?;
        let tid = v["transfer"].as_i64().context("transfer")?;
        let t = loop {
            let t: serde_json::Value = http
                .get(format!("{}/v1/transfers/{tid}", hub.base))
                .header("Authorization", &auth)
                .send()
                .await?
                .json()
                .await?;
            if t["state"] != "queued" && t["state"] != "running" {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            t["state"] == "done" && t["executor"] == "spoke",
            "copy: {t}"
        );
        let moved = io_bytes(hub.proc.0.id()) - hub_io;
        ours.push(gib / secs);
        hub_share.push(moved as f64 / SIZE as f64 * 100.0);
        let copied = std::fs::metadata(b.root.join("dst/ours.bin"))?.len();
        anyhow::ensure!(copied == SIZE, "copied {copied} bytes");
        std::fs::remove_file(b.root.join("dst/ours.bin"))?;

        // Baseline: rclone streaming between the two servers.
        let t0 = Instant::now();
        let st = Command::new("rclone")
            .args([
                "copyto",
                "a:src/big.bin",
                "b:dst/rclone.bin",
                "--config",
                "/dev/null",
            ])
            .envs(rclone_env("a", &a))
            .envs(rclone_env("b", &b))
            // rclone 1.60's S3 client cannot load a custom CA bundle with its own transport.
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "rclone copyto failed");
        theirs.push(gib / t0.elapsed().as_secs_f64());
        std::fs::remove_file(b.root.join("dst/rclone.bin"))?;
        println!(
            "round {round}: spoke {:.3} GiB/s rclone {:.3} GiB/s | hub moved {:.3} % of the payload",
            ours[round], theirs[round], hub_share[round]
        );
    }
    let peak = status_kib(spoke_pid, "VmHWM:");
    let (o, r) = (median(ours), median(theirs));
    println!(
        "offload (median of {ROUNDS}): spoke copy {o:.3} GiB/s vs rclone copyto {r:.3} GiB/s = {:.2}x | \
         hub moved {:.3} % of the payload | spoke peak RSS {} MiB, idle RSS {} MiB",
        o / r,
        median(hub_share),
        peak / 1024,
        idle_rss / 1024
    );
    drop(spoke);
    Ok(())
}

/// Sends `path` through an upload session with `parallel` parts at a time; returns the file.
async fn session_upload(
    http: &reqwest::Client,
    hub: &DevHub,
    account: i64,
    path: &Path,
    name: &str,
    parallel: usize,
) -> anyhow::Result<serde_json::Value> {
    use futures::StreamExt as _;
    let size = std::fs::metadata(path)?.len();
    let auth = format!("APIKey {}", hub.key);
    let base = format!("{}/v1/accounts/{account}/storage/multipart", hub.base);
    let s: serde_json::Value = http
        .post(format!("{base}?overwrite=true"))
        .header("Authorization", &auth)
        .json(&serde_json::json!({"parent_id": "root", "name": name, "size": size}))
        .send()
        .await?
        .json()
        .await?;
    let id = s["id"].as_i64().context("session id")?;
    let part = s["part_size"].as_u64().context("part size")?;
    let parts = size.div_ceil(part);
    let results = futures::stream::iter(1..=parts)
        .map(|n| {
            let (http, auth, base, path) =
                (http.clone(), auth.clone(), base.clone(), path.to_owned());
            async move {
                use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
                let start = (n - 1) * part;
                let len = part.min(size - start);
                let mut f = tokio::fs::File::open(&path).await?;
                f.seek(std::io::SeekFrom::Start(start)).await?;
                let body = tokio_util_body(f.take(len));
                let r = http
                    .put(format!("{base}/{id}?part_number={n}"))
                    .header("Authorization", &auth)
                    .header("Content-Length", len)
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "part {n}: {}", r.status());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    let r = http
        .post(format!("{base}/{id}/complete"))
        .header("Authorization", &auth)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "complete: {}", r.status());
    Ok(r.json().await?)
}

/// A reader as a streamed request body (1 MiB reads).
fn tokio_util_body(r: impl tokio::io::AsyncRead + Send + Unpin + 'static) -> reqwest::Body {
    let s = futures::stream::unfold(r, |mut r| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 1 << 20];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    reqwest::Body::wrap_stream(s)
}

async fn uploads() -> anyhow::Result<()> {
    const SIZE: u64 = 2 << 30;
    const MIB: u64 = 1 << 20;
    let tmp = tempfile::Builder::new()
        .prefix("switchyard-bench-")
        .tempdir_in("/var/tmp")?;
    let src_dir = tmp.path().join("www");
    std::fs::create_dir_all(&src_dir)?;
    let src = src_dir.join("big.bin");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        for i in 0..SIZE / MIB {
            f.write_all(&e2e::pattern(MIB as usize, i))?;
        }
        f.flush()?;
    }
    let s3 = S3Fs::start(tmp.path().join("s3")).await?;
    std::fs::create_dir_all(s3.root.join("dst"))?;
    let nginx =
        e2e::servers::NginxServer::start(&format!("location / {{ root {}; }}", src_dir.display()))
            .await?;
    let hub = start_hub(&tmp.path().join("hub"), None).await?;
    let http = reqwest::Client::new();
    let auth = format!("APIKey {}", hub.key);
    let v: serde_json::Value = http
        .post(format!("{}/v1/accounts", hub.base))
        .header("Authorization", &auth)
        .json(
            &serde_json::json!({"service": "s3", "account": "bench", "credentials": {
            "bucket": "dst", "endpoint": s3.endpoint(), "region": "us-east-1",
            "access_key_id": "bench", "secret_access_key": "bench-secret"}}),
        )
        .send()
        .await?
        .json()
        .await?;
    let account = v["id"].as_i64().context("account id")?;
    let rclone = |args: &[&str]| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let st = Command::new("rclone")
            .args(args)
            .args(["--config", "/dev/null"])
            .env("RCLONE_CONFIG_B_TYPE", "s3")
            .env("RCLONE_CONFIG_B_PROVIDER", "Other")
            .env("RCLONE_CONFIG_B_ENDPOINT", s3.endpoint())
            .env("RCLONE_CONFIG_B_ACCESS_KEY_ID", "bench")
            .env("RCLONE_CONFIG_B_SECRET_ACCESS_KEY", "bench-secret")
            .env("RCLONE_CONFIG_B_REGION", "us-east-1")
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "rclone {args:?} failed");
        Ok(t0.elapsed().as_secs_f64())
    };
    let gib = SIZE as f64 / (1u64 << 30) as f64;
    let landed = |name: &str| -> anyhow::Result<()> {
        let n = std::fs::metadata(s3.root.join("dst").join(name))?.len();
        anyhow::ensure!(n == SIZE, "{name}: {n} bytes");
        std::fs::remove_file(s3.root.join("dst").join(name))?;
        Ok(())
    };
    let src_url = format!("{}/big.bin", nginx.endpoint());
    let pid = hub.proc.0.id();
    let idle = status_kib(pid, "VmRSS:");
    // The hub's RSS sampled every 20 ms while `f` runs: the peak of each kind of upload.
    let sampled = |peak: std::sync::Arc<std::sync::atomic::AtomicU64>| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(
                    status_kib(pid, "VmRSS:"),
                    std::sync::atomic::Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        (stop, t)
    };
    let sess_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut sess, mut copyto, mut url, mut copyurl) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let t0 = Instant::now();
        let (stop, t) = sampled(sess_peak.clone());
        let f = session_upload(&http, &hub, account, &src, "session.bin", 4).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = t.join();
        let f = f?;
        sess.push(gib / t0.elapsed().as_secs_f64());
        anyhow::ensure!(f["size"] == SIZE, "session: {f}");
        landed("session.bin")?;
        copyto.push(gib / rclone(&["copyto", &src.display().to_string(), "b:dst/rclone.bin"])?);
        landed("rclone.bin")?;

        let t0 = Instant::now();
        let (stop, t) = sampled(url_peak.clone());
        let r = http
            .post(format!(
                "{}/v1/accounts/{account}/storage/files?overwrite=true",
                hub.base
            ))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"url": src_url, "parent_id": "root", "name": "url.bin"}))
            .send()
            .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = t.join();
        let r = r?;
        anyhow::ensure!(r.status() == 201, "url upload: {}", r.status());
        url.push(gib / t0.elapsed().as_secs_f64());
        landed("url.bin")?;
        copyurl.push(gib / rclone(&["copyurl", &src_url, "b:dst/rclone-url.bin"])?);
        landed("rclone-url.bin")?;
        println!(
            "round {round}: session {:.3} GiB/s, rclone copyto {:.3} GiB/s | url {:.3} GiB/s, rclone copyurl {:.3} GiB/s",
            sess[round], copyto[round], url[round], copyurl[round]
        );
    }
    let (s, c, u, cu) = (median(sess), median(copyto), median(url), median(copyurl));
    let load = std::sync::atomic::Ordering::Relaxed;
    println!(
        "uploads (median of {ROUNDS}, 2 GiB into s3s-fs): session (4 parts at a time) {s:.3} GiB/s vs rclone copyto {c:.3} GiB/s = {:.2}x | \
         from a URL {u:.3} GiB/s vs rclone copyurl {cu:.3} GiB/s = {:.2}x | hub RSS idle {} MiB, peak during sessions {} MiB, during URL uploads {} MiB",
        s / c,
        u / cu,
        idle / 1024,
        sess_peak.load(load) / 1024,
        url_peak.load(load) / 1024
    );
    Ok(())
}
