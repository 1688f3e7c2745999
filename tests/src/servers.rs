//! Real backing servers for tests — PostgreSQL, Redis, S3 (moto), WebDAV (rclone), SFTP (OpenSSH
//! sshd), Azure Blob (Azurite), nginx and Pebble (ACME) — started on 127.0.0.1 free ports; each handle
//! kills its processes and removes its temp dir on Drop.
//!
//! Every server runs in its own process group with stdout/stderr captured to a log file in its
//! temp dir; the tail of that log is part of the error when a server fails to start. Readiness is
//! polled (every 50 ms, at most 30 s), never slept for. A small `sh` watchdog per server kills the
//! server and removes its temp dir if the test process dies without running `Drop` (SIGKILL,
//! servers kept in statics, ...).
//!
//! Binaries come from the machine; `.ci/install-deps.sh` installs the missing ones.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Readiness poll interval.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Start attempts (each on a fresh port) when a server exits during startup, e.g. port race.
const START_ATTEMPTS: usize = 3;
/// Timeout of one probe / helper request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Public helpers
// ---------------------------------------------------------------------------------------------

/// A currently free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener).
///
/// Ports are never handed out twice within one process, so concurrently starting servers
/// cannot race each other for the same port (other processes still can; starters retry).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    let mut port = 0;
    for _ in 0..64 {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).expect("bind a TCP listener on 127.0.0.1:0");
        port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        drop(listener);
        let mut set = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if set.insert(port) {
            break;
        }
    }
    port
}

/// Finds an executable named `bin` in `PATH`, then the usual sbin/bin directories, then
/// `/usr/lib/postgresql/*/bin` (newest version first). A `bin` containing `/` is checked as is.
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        let path = PathBuf::from(bin);
        return is_executable(&path).then_some(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.extend(postgres_bin_dirs());
    dirs.into_iter()
        .map(|dir| dir.join(bin))
        .find(|path| is_executable(path))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster (trust auth, user and database `switchyard`, fsync off):
/// a primary ([`Postgres::start`], optionally inside a network namespace) or a streaming
/// replica of one ([`Postgres::replica`]).
pub struct Postgres {
    // Field order is drop order: the process guard goes before the temp dir.
    proc: Option<Proc>,
    port: u16,
    /// The address the test process reaches the server at.
    host: std::net::IpAddr,
    /// `listen_addresses`.
    listen: String,
    /// The network namespace the server runs in (`None`: the test process's).
    netns: Option<String>,
    data: PathBuf,
    bins: PgBins,
    run_as: Option<Account>,
    dir: TempDir,
}

#[derive(Clone)]
struct PgBins {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_ctl: PathBuf,
    pg_isready: PathBuf,
    createdb: PathBuf,
    psql: PathBuf,
    pg_basebackup: PathBuf,
}

impl PgBins {
    fn find() -> Result<PgBins> {
        const SERVER_PKG: &str = "Debian package `postgresql` (postgresql-15)";
        const CLIENT_PKG: &str = "Debian package `postgresql-client`";
        let initdb = which("initdb").ok_or_else(|| missing("initdb", SERVER_PKG))?;
        // Prefer the tools next to the real initdb (not Debian's pg_wrapper in /usr/bin).
        let bindir = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let tool = |name: &str, pkg: &str| -> Result<PathBuf> {
            bindir
                .as_ref()
                .map(|dir| dir.join(name))
                .filter(|path| is_executable(path))
                .or_else(|| which(name))
                .ok_or_else(|| missing(name, pkg))
        };
        Ok(PgBins {
            postgres: tool("postgres", SERVER_PKG)?,
            pg_ctl: tool("pg_ctl", SERVER_PKG)?,
            pg_isready: tool("pg_isready", CLIENT_PKG)?,
            createdb: tool("createdb", CLIENT_PKG)?,
            psql: tool("psql", CLIENT_PKG)?,
            pg_basebackup: tool("pg_basebackup", CLIENT_PKG)?,
            initdb,
        })
    }
}

/// Where a server runs: its namespace, the address it also listens on, and the clients it
/// trusts from there.
struct Placement {
    netns: Option<String>,
    ip: Option<(std::net::IpAddr, String)>,
}

impl Postgres {
    /// `initdb`s a cluster in a temp dir and starts `postgres` on a free loopback port.
    pub async fn start() -> Result<Postgres> {
        Self::start_with(Placement {
            netns: None,
            ip: None,
        })
        .await
    }

    /// Like [`Postgres::start`], also listening on `ip` and trusting clients from `allow` (a
    /// CIDR), for servers in network namespaces (the lab's hubs).
    pub async fn start_on(ip: std::net::IpAddr, allow: &str) -> Result<Postgres> {
        Self::start_with(Placement {
            netns: None,
            ip: Some((ip, allow.to_owned())),
        })
        .await
    }

    /// A primary running inside the network namespace `netns` (a lab location), listening on
    /// `ip` there and trusting clients (and replication) from `allow`. The test process
    /// reaches it at `ip`.
    pub async fn start_in(netns: &str, ip: std::net::IpAddr, allow: &str) -> Result<Postgres> {
        Self::start_with(Placement {
            netns: Some(netns.to_owned()),
            ip: Some((ip, allow.to_owned())),
        })
        .await
    }

    async fn start_with(place: Placement) -> Result<Postgres> {
        let bins = PgBins::find()?;
        let (run_as, dir) = pg_dir()?;
        let initdb_log = dir.path().join("initdb.log");
        let data = dir.path().join("data");

        let mut initdb_cmd = tokio::process::Command::new(&bins.initdb);
        initdb_cmd
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "switchyard",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_stdio(&initdb_log)?)
            .stderr(log_stdio(&initdb_log)?)
            .kill_on_drop(true);
        clear_pg_env_tokio(&mut initdb_cmd);
        if let Some(account) = &run_as {
            initdb_cmd.uid(account.uid).gid(account.gid);
        }
        let status = initdb_cmd
            .status()
            .await
            .with_context(|| format!("running {}", bins.initdb.display()))?;
        if !status.success() {
            bail!("initdb failed ({status}){}", log_tail_section(&initdb_log));
        }
        if let Some((_, allow)) = &place.ip {
            trust_clients(&data, allow)?;
        }
        let server = Self::launch(bins, run_as, dir, data, place).await?;
        server.create_database().await?;
        Ok(server)
    }

    /// Starts `postgres` on a fresh port (retrying a port someone else took).
    async fn launch(
        bins: PgBins,
        run_as: Option<Account>,
        dir: TempDir,
        data: PathBuf,
        place: Placement,
    ) -> Result<Postgres> {
        let (host, listen) = match &place.ip {
            Some((ip, _)) if place.netns.is_some() => (*ip, format!("127.0.0.1,{ip}")),
            Some((ip, _)) => ("127.0.0.1".parse()?, format!("127.0.0.1,{ip}")),
            None => ("127.0.0.1".parse()?, "127.0.0.1".to_owned()),
        };
        let mut server = Postgres {
            proc: None,
            port: 0,
            host,
            listen,
            netns: place.netns,
            data,
            bins,
            run_as,
            dir,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.run().await {
                Ok(()) => return Ok(server),
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("postgres", last_error))
    }

    /// Starts the server process on `self.port` and waits until it accepts connections.
    async fn run(&mut self) -> Result<(), Failure> {
        let log = self.dir.path().join("postgres.log");
        let args: Vec<String> = vec![
            "-D".into(),
            self.data.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-c".into(),
            format!("listen_addresses={}", self.listen),
            "-c".into(),
            format!("unix_socket_directories={}", self.dir.path().display()),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
            "-c".into(),
            "max_connections=200".into(),
        ];
        let cmd = self.server_command(&self.bins.postgres, &args);
        // SIGQUIT = immediate shutdown, so a watchdog stop also releases shared memory.
        let mut proc =
            Proc::spawn("postgres", cmd, &log, self.dir.path(), 3).map_err(Failure::Fatal)?;
        let (isready, host, port) = (self.bins.pg_isready.clone(), self.host, self.port);
        let ready = wait_ready(&mut proc, || pg_isready_ok(&isready, host, port)).await;
        match ready {
            Ok(()) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(Failure::Fatal(err)) => {
                stop_postgres(
                    &self.bins.pg_ctl,
                    &self.data,
                    self.dir.path(),
                    self.run_as.as_ref(),
                );
                Err(Failure::Fatal(err))
            }
            Err(e) => Err(e),
        }
    }

    /// `program args` as the unprivileged account, inside the namespace when there is one
    /// (`ip netns exec` needs root, so the account is taken after it, with `setpriv`).
    fn server_command(&self, program: &Path, args: &[String]) -> Command {
        let mut cmd = match (&self.netns, &self.run_as) {
            (Some(ns), Some(account)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"])
                    .arg(format!("--reuid={}", account.uid))
                    .arg(format!("--regid={}", account.gid))
                    .args(["--clear-groups", "--"])
                    .arg(program);
                c
            }
            (Some(ns), None) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            (None, account) => {
                let mut c = Command::new(program);
                if let Some(account) = account {
                    c.uid(account.uid).gid(account.gid);
                }
                c
            }
        };
        cmd.args(args).current_dir(self.dir.path());
        clear_pg_env(&mut cmd);
        cmd
    }

    /// Starts a streaming replica of this server: `pg_basebackup -R -X stream` through a new
    /// replication slot `slot`, then `postgres` (hot standby) in `netns` (listening on `ip`,
    /// trusting `allow`) or on loopback; returns once its WAL receiver is streaming.
    pub async fn replica(
        &self,
        slot: &str,
        netns: Option<&str>,
        ip: Option<(std::net::IpAddr, &str)>,
    ) -> Result<Postgres> {
        let bins = self.bins.clone();
        let (run_as, dir) = pg_dir()?;
        let data = dir.path().join("data");
        let log = dir.path().join("basebackup.log");
        let mut cmd = tokio::process::Command::new(&bins.pg_basebackup);
        cmd.args(["-h", &self.host.to_string(), "-p", &self.port.to_string()])
            .args(["-U", "switchyard", "-D"])
            .arg(&data)
            .args([
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "--no-sync",
                "--checkpoint=fast",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_stdio(&log)?)
            .stderr(log_stdio(&log)?)
            .kill_on_drop(true);
        clear_pg_env_tokio(&mut cmd);
        if let Some(account) = &run_as {
            cmd.uid(account.uid).gid(account.gid);
        }
        let status = tokio::time::timeout(READY_TIMEOUT, cmd.status())
            .await
            .map_err(|_| anyhow!("pg_basebackup timed out"))?
            .context("running pg_basebackup")?;
        if !status.success() {
            bail!("pg_basebackup failed ({status}){}", log_tail_section(&log));
        }
        if let Some((_, allow)) = ip {
            trust_clients(&data, allow)?;
        }
        let place = Placement {
            netns: netns.map(str::to_owned),
            ip: ip.map(|(a, c)| (a, c.to_owned())),
        };
        let server = Self::launch(bins, run_as, dir, data, place).await?;
        // Streaming: the WAL receiver is connected (not just restoring from the backup).
        let started = Instant::now();
        loop {
            let s = server
                .sql("SELECT status FROM pg_stat_wal_receiver")
                .await
                .unwrap_or_default();
            if s == "streaming" {
                return Ok(server);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "replica not streaming after {READY_TIMEOUT:?} (status {s:?}){}",
                    log_tail_section(&server.dir.path().join("postgres.log"))
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the server (fast shutdown), keeping its data for [`Postgres::restart`].
    pub fn stop(&mut self) {
        stop_postgres(
            &self.bins.pg_ctl,
            &self.data,
            self.dir.path(),
            self.run_as.as_ref(),
        );
        self.proc = None;
    }

    /// Starts a stopped server again, as it was (same data, same port).
    pub async fn restart(&mut self) -> Result<()> {
        self.run().await.map_err(|f| match f {
            Failure::Exited(e) | Failure::Fatal(e) => e,
        })
    }

    /// `postgres://switchyard@HOST:PORT/switchyard` (trust auth, no password).
    pub fn url(&self) -> String {
        self.url_at(self.host)
    }

    /// The same database at another address it listens on ([`Postgres::start_on`]).
    pub fn url_at(&self, ip: std::net::IpAddr) -> String {
        format!(
            "postgres://switchyard@{}/switchyard",
            std::net::SocketAddr::new(ip, self.port)
        )
    }

    /// `HOST:PORT` as the test process reaches it.
    pub fn host_port(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }

    /// Runs one SQL statement with `psql` as the superuser; its rows, unaligned.
    pub async fn sql(&self, query: &str) -> Result<String> {
        let mut cmd = tokio::process::Command::new(&self.bins.psql);
        cmd.args([
            "-h",
            &self.host.to_string(),
            "-p",
            &self.port.to_string(),
            "-U",
            "switchyard",
        ])
        .args([
            "-d",
            "switchyard",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ])
        .arg(query)
        .current_dir(self.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        clear_pg_env_tokio(&mut cmd);
        let output = tokio::time::timeout(READY_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("psql timed out"))?
            .with_context(|| format!("running {}", self.bins.psql.display()))?;
        if !output.status.success() {
            bail!(
                "psql failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn create_database(&self) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.bins.createdb);
        cmd.args([
            "-h",
            &self.host.to_string(),
            "-p",
            &self.port.to_string(),
            "-U",
            "switchyard",
            "switchyard",
        ])
        .current_dir(self.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        clear_pg_env_tokio(&mut cmd);
        let output = tokio::time::timeout(READY_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("createdb timed out"))?
            .with_context(|| format!("running {}", self.bins.createdb.display()))?;
        if !output.status.success() {
            bail!(
                "createdb switchyard failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                log_tail_section(&self.dir.path().join("postgres.log"))
            );
        }
        Ok(())
    }
}

/// Lets clients (and replication) from the CIDR `allow` in without a password.
fn trust_clients(data: &Path, allow: &str) -> Result<()> {
    use std::io::Write as _;
    let mut hba = fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .context("pg_hba.conf")?;
    writeln!(hba, "host all all {allow} trust").context("pg_hba.conf")?;
    writeln!(hba, "host replication all {allow} trust").context("pg_hba.conf")?;
    Ok(())
}

/// The account to run the server as, and a temp dir it owns.
fn pg_dir() -> Result<(Option<Account>, TempDir)> {
    // initdb/postgres refuse to run as root.
    let run_as = postgres_account()?;
    // /tmp rather than $TMPDIR: it must be reachable by the unprivileged account, and unix
    // socket paths are limited to ~107 bytes.
    let dir = tempfile::Builder::new()
        .prefix("switchyard-pg-")
        .tempdir_in("/tmp")
        .context("creating the PostgreSQL temp dir")?;
    if let Some(account) = &run_as {
        std::os::unix::fs::chown(dir.path(), Some(account.uid), Some(account.gid))
            .with_context(|| format!("chown {} to {}", dir.path().display(), account.name))?;
    }
    Ok((run_as, dir))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Then `proc` drops (kills whatever is left of the process group), then `dir`.
        stop_postgres(
            &self.bins.pg_ctl,
            &self.data,
            self.dir.path(),
            self.run_as.as_ref(),
        );
    }
}

fn stop_postgres(pg_ctl: &Path, data: &Path, cwd: &Path, run_as: Option<&Account>) {
    let mut cmd = Command::new(pg_ctl);
    cmd.arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t", "10"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    clear_pg_env(&mut cmd);
    if let Some(account) = run_as {
        cmd.uid(account.uid).gid(account.gid);
    }
    let _ = cmd.status();
}

async fn pg_isready_ok(pg_isready: &Path, host: std::net::IpAddr, port: u16) -> bool {
    let mut cmd = tokio::process::Command::new(pg_isready);
    cmd.args([
        "-q",
        "-h",
        &host.to_string(),
        "-p",
        &port.to_string(),
        "-U",
        "switchyard",
        "-d",
        "postgres",
        "-t",
        "2",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    clear_pg_env_tokio(&mut cmd);
    matches!(tokio::time::timeout(IO_TIMEOUT, cmd.status()).await, Ok(Ok(status)) if status.success())
}

/// The account to run the PostgreSQL server binaries as: none when not root, else `postgres`
/// (or `nobody`).
fn postgres_account() -> Result<Option<Account>> {
    if current_uid() != 0 {
        return Ok(None);
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(account_by_name)
        .map(Some)
        .ok_or_else(|| {
            anyhow!(
                "running as root but neither a `postgres` nor a `nobody` user exists for initdb"
            )
        })
}

fn is_pg_env(key: &OsStr) -> bool {
    key.to_str().is_some_and(|k| k.starts_with("PG"))
}

/// Drops inherited `PG*` variables (PGHOST, PGDATABASE, PGDATA, ...) that would redirect tools.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os().filter(|(k, _)| is_pg_env(k)) {
        cmd.env_remove(key);
    }
}

fn clear_pg_env_tokio(cmd: &mut tokio::process::Command) {
    for (key, _) in std::env::vars_os().filter(|(k, _)| is_pg_env(k)) {
        cmd.env_remove(key);
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A `redis-server` on a loopback port with persistence off (no RDB snapshots, no AOF): a
/// restart starts empty, which is what the hub's outbox must survive.
pub struct RedisServer {
    proc: Option<Proc>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port.
    pub async fn start() -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-redis-")
            .tempdir()
            .context("creating the Redis temp dir")?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match Self::spawn(dir.path(), port).await {
                Ok(proc) => {
                    return Ok(RedisServer {
                        proc: Some(proc),
                        port,
                        dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("redis-server", last_error))
    }

    async fn spawn(dir: &Path, port: u16) -> Result<Proc, Failure> {
        let bin = which("redis-server").ok_or_else(|| {
            Failure::Fatal(missing("redis-server", "Debian package `redis-server`"))
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir)
            .current_dir(dir);
        let mut proc = Proc::spawn("redis-server", cmd, &dir.join("redis.log"), dir, 0)
            .map_err(Failure::Fatal)?;
        wait_ready(&mut proc, || async move { redis_ping(port).await }).await?;
        Ok(proc)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILLs the server (nothing is saved: persistence is off).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc = None;
        let mut last = None;
        // The killed server's socket may linger for a moment; a start that loses the port to
        // it exits at once and is retried.
        for _ in 0..20 {
            match Self::spawn(self.dir.path(), self.port).await {
                Ok(p) => {
                    self.proc = Some(p);
                    return Ok(());
                }
                Err(Failure::Exited(e)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        Err(attempts_failed("redis-server restart", last))
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub async fn command(&self, line: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .context("connecting to redis")?;
        s.write_all(format!("{line}\r\n").as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .context("redis reply timed out")??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// Whether a Redis server answers `PING` on the loopback port.
async fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

// ---------------------------------------------------------------------------------------------
// S3 (moto)
// ---------------------------------------------------------------------------------------------

/// An in-memory S3 API (moto server). Any credentials are accepted, unless it was started
/// with [`S3Server::start_authenticated`].
pub struct S3Server {
    proc: Proc,
    host: std::net::IpAddr,
    port: u16,
    _dir: TempDir,
    /// The IAM user's key when requests are authenticated.
    key: Option<(String, String)>,
}

impl S3Server {
    /// Starts `moto_server` (or `python3 -m moto.server`) on a free loopback port.
    pub async fn start() -> Result<S3Server> {
        Self::start_at(None, std::net::Ipv4Addr::LOCALHOST.into(), None).await
    }

    /// Starts moto checking every request's signature and permissions (its IAM emulation):
    /// the first requests, unchecked, create an IAM user allowed everything, its access key
    /// (then [`S3Server::access_key_id`] and [`S3Server::secret_access_key`]) and `buckets`;
    /// any request after that with another key or a wrong secret is refused as AWS would
    /// (`403 SignatureDoesNotMatch`, `InvalidAccessKeyId`).
    pub async fn start_authenticated(buckets: &[&str]) -> Result<S3Server> {
        let free = 3 + buckets.len();
        let mut s = Self::start_at(None, std::net::Ipv4Addr::LOCALHOST.into(), Some(free)).await?;
        let iam = |action: &str, extra: &str| {
            format!("Action={action}&Version=2010-05-08&UserName=switchyard{extra}")
        };
        s.iam(&iam("CreateUser", "")).await?;
        let key = s.iam(&iam("CreateAccessKey", "")).await?;
        let field = |tag: &str| -> Result<String> {
            key.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|r| r.split(&format!("</{tag}>")).next())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {tag} in moto's CreateAccessKey answer: {key}"))
        };
        let (id, secret) = (field("AccessKeyId")?, field("SecretAccessKey")?);
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        s.iam(&iam(
            "PutUserPolicy",
            &format!("&PolicyName=all&PolicyDocument={policy}"),
        ))
        .await?;
        for b in buckets {
            s.create_bucket(b).await?;
        }
        s.key = Some((id, secret));
        Ok(s)
    }

    /// An IAM query request (moto routes it by the credential scope; its signature is not
    /// checked while unauthenticated requests are still allowed).
    async fn iam(&self, body: &str) -> Result<String> {
        let r = reqwest::Client::new()
            .post(self.endpoint())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=00",
            )
            .body(body.to_owned())
            .send()
            .await
            .context("an IAM request to moto")?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("moto IAM {body}: HTTP {status}: {text}");
        }
        Ok(text)
    }

    /// Starts moto inside network namespace `netns` (made by the caller), listening on `host`,
    /// an address of that namespace the test process can reach.
    pub async fn start_in(netns: &str, host: std::net::IpAddr) -> Result<S3Server> {
        Self::start_at(Some(netns), host, None).await
    }

    async fn start_at(
        netns: Option<&str>,
        host: std::net::IpAddr,
        unauthenticated: Option<usize>,
    ) -> Result<S3Server> {
        let (program, prefix) = moto_command().await?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-s3-")
            .tempdir()
            .context("creating the S3 temp dir")?;
        let log = dir.path().join("moto.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&program);
                    c
                }
                None => Command::new(&program),
            };
            cmd.args(&prefix)
                .args(["-H", &host.to_string(), "-p", &port.to_string()])
                .current_dir(dir.path())
                .env("PYTHONUNBUFFERED", "1");
            if let Some(n) = unauthenticated {
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
            }
            let mut proc = Proc::spawn("moto_server", cmd, &log, dir.path(), 0)?;
            let addr = std::net::SocketAddr::new(host, port);
            // Moto's own page is not an S3 request: it does not use up the unauthenticated ones.
            let probe = if unauthenticated.is_some() {
                "/moto-api/"
            } else {
                "/"
            };
            match wait_ready(&mut proc, || async move {
                matches!(http_request_to(addr, "GET", probe, "").await, Ok((200, _)))
            })
            .await
            {
                Ok(()) => {
                    return Ok(S3Server {
                        proc,
                        host,
                        port,
                        _dir: dir,
                        key: None,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("moto_server", last_error))
    }

    /// `http://HOST:PORT` (path-style addressing; region is anything, e.g. us-east-1).
    pub fn endpoint(&self) -> String {
        format!("http://{}", std::net::SocketAddr::new(self.host, self.port))
    }

    /// Creates a bucket with an unauthenticated `PUT /name` (moto does not check signatures).
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let addr = std::net::SocketAddr::new(self.host, self.port);
        let (status, body) = http_request_to(addr, "PUT", &format!("/{name}"), "")
            .await
            .with_context(|| format!("PUT /{name} to moto at {}", self.endpoint()))?;
        if status != 200 {
            bail!(
                "creating bucket {name:?}: HTTP {status}: {}{}",
                String::from_utf8_lossy(&body).trim(),
                log_tail_section(&self.proc.log)
            );
        }
        Ok(())
    }

    /// Access key id to sign with (any, unless authenticated).
    pub fn access_key_id(&self) -> &str {
        self.key.as_ref().map_or("switchyard", |k| k.0.as_str())
    }

    /// Secret access key to sign with (any, unless authenticated).
    pub fn secret_access_key(&self) -> &str {
        self.key
            .as_ref()
            .map_or("switchyard-secret", |k| k.1.as_str())
    }
}

async fn moto_command() -> Result<(PathBuf, Vec<String>)> {
    if let Some(moto) = which("moto_server") {
        return Ok((moto, Vec::new()));
    }
    if let Some(python) = which("python3") {
        let ok = tokio::process::Command::new(&python)
            .args(["-c", "import moto.server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return Ok((python, vec!["-m".into(), "moto.server".into()]));
        }
    }
    Err(missing(
        "moto_server",
        "PyPI package `moto[server]` (pip install 'moto[server]')",
    ))
}

// ---------------------------------------------------------------------------------------------
// WebDAV (rclone)
// ---------------------------------------------------------------------------------------------

/// A WebDAV server (`rclone serve webdav`) over a temp directory, with basic auth.
pub struct WebDavServer {
    _proc: Proc,
    port: u16,
    data: PathBuf,
    _dir: TempDir,
}

impl WebDavServer {
    /// Starts `rclone serve webdav` on a free loopback port.
    pub async fn start() -> Result<WebDavServer> {
        let rclone = which("rclone").ok_or_else(|| missing("rclone", "Debian package `rclone`"))?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-webdav-")
            .tempdir()
            .context("creating the WebDAV temp dir")?;
        let data = dir.path().join("data");
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        let config = dir.path().join("rclone.conf");
        fs::write(&config, "").with_context(|| format!("creating {}", config.display()))?;
        let log = dir.path().join("rclone.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut cmd = Command::new(&rclone);
            cmd.args(["serve", "webdav"])
                .arg(&data)
                .args(["--addr", &format!("127.0.0.1:{port}")])
                .args(["--user", "switchyard", "--pass", "switchyard-secret"])
                .arg("--config")
                .arg(&config)
                // Files written straight into dir() by tests must show up at once.
                .args(["--dir-cache-time", "0s"])
                .current_dir(dir.path());
            let mut proc = Proc::spawn("rclone", cmd, &log, dir.path(), 0)?;
            match wait_ready(&mut proc, || async move {
                http_request(port, "OPTIONS", "/", "").await.is_ok()
            })
            .await
            {
                Ok(()) => {
                    return Ok(WebDavServer {
                        _proc: proc,
                        port,
                        data,
                        _dir: dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("rclone serve webdav", last_error))
    }

    /// `http://127.0.0.1:PORT` (the WebDAV root is [`WebDavServer::dir`]).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Basic-auth user.
    pub fn username(&self) -> &str {
        "switchyard"
    }

    /// Basic-auth password.
    pub fn password(&self) -> &str {
        "switchyard-secret"
    }

    /// The directory served at the WebDAV root.
    pub fn dir(&self) -> &Path {
        &self.data
    }
}

// ---------------------------------------------------------------------------------------------
// Azure Blob (Azurite)
// ---------------------------------------------------------------------------------------------

/// Azurite's well-known development account (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZURE_API_VERSION: &str = "2021-08-06";

/// The Azure Blob emulator (`azurite-blob` from npm) on a free loopback port, storing in a temp
/// dir. It checks SharedKey signatures, so a wrong key is really refused.
pub struct AzuriteServer {
    proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl AzuriteServer {
    /// Starts `azurite-blob` on a free loopback port.
    pub async fn start() -> Result<AzuriteServer> {
        let azurite = which("azurite-blob").ok_or_else(|| {
            missing(
                "azurite-blob",
                "npm package `azurite` (npm install -g azurite)",
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-azurite-")
            .tempdir()
            .context("creating the Azurite temp dir")?;
        let log = dir.path().join("azurite.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut cmd = Command::new(&azurite);
            cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(dir.path())
                .args(["--skipApiVersionCheck", "--disableProductStyleUrl"])
                .current_dir(dir.path());
            let mut proc = Proc::spawn("azurite-blob", cmd, &log, dir.path(), 0)?;
            match wait_ready(&mut proc, || async move {
                // Any HTTP answer (403 for an unsigned request) means it is listening.
                http_request(port, "GET", "/", "").await.is_ok()
            })
            .await
            {
                Ok(()) => {
                    return Ok(AzuriteServer {
                        proc,
                        port,
                        _dir: dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("azurite-blob", last_error))
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (path-style, as the emulator expects).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// The storage account name.
    pub fn account_name(&self) -> &str {
        AZURITE_ACCOUNT
    }

    /// The storage account key (base64).
    pub fn account_key(&self) -> &str {
        AZURITE_KEY
    }

    /// Creates a container with a SharedKey-signed `PUT ?restype=container`.
    pub async fn create_container(&self, name: &str) -> Result<()> {
        let date = rfc1123_now();
        // Content-Length 0 signs as empty (API versions since 2015-02-21).
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{AZURE_API_VERSION}\n\
             /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        );
        let signature = shared_key_signature(AZURITE_KEY, &string_to_sign)?;
        let headers = format!(
            "x-ms-date: {date}\r\nx-ms-version: {AZURE_API_VERSION}\r\n\
             Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\n"
        );
        let path = format!("/{AZURITE_ACCOUNT}/{name}?restype=container");
        let (status, body) = http_request(self.port, "PUT", &path, &headers)
            .await
            .with_context(|| format!("PUT {path} to Azurite"))?;
        if status != 201 {
            bail!(
                "creating container {name:?}: HTTP {status}: {}{}",
                String::from_utf8_lossy(&body).trim(),
                log_tail_section(&self.proc.log)
            );
        }
        Ok(())
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the date format SharedKey signs.
fn rfc1123_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    now.format(&format).unwrap_or_default()
}

fn shared_key_signature(key_b64: &str, string_to_sign: &str) -> Result<String> {
    use base64::Engine as _;
    use hmac::Mac as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(key_b64)
        .context("account key is not base64")?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).context("HMAC key")?;
    mac.update(string_to_sign.as_bytes());
    Ok(engine.encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// An nginx on a free loopback port with the caller's `server { ... }` body (the `listen` line is
/// added), e.g. a reverse proxy that rate limits like a cloud provider's front end.
pub struct NginxServer {
    _proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl NginxServer {
    /// Starts nginx in the foreground with `server_body` inside its only `server` block.
    pub async fn start(server_body: &str) -> Result<NginxServer> {
        let nginx =
            which("nginx").ok_or_else(|| missing("nginx", "Debian package `nginx-light`"))?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-nginx-")
            .tempdir()
            .context("creating the nginx temp dir")?;
        let d = dir.path().display();
        let log = dir.path().join("nginx.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let conf = dir.path().join("nginx.conf");
            fs::write(
                &conf,
                format!(
                    "daemon off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                       server {{ listen 127.0.0.1:{port};\n{server_body}\n}} }}\n"
                ),
            )
            .with_context(|| format!("writing {}", conf.display()))?;
            let mut cmd = Command::new(&nginx);
            cmd.arg("-c").arg(&conf).arg("-p").arg(dir.path());
            let mut proc = Proc::spawn("nginx", cmd, &log, dir.path(), 0)?;
            match wait_ready(&mut proc, || async move {
                http_request(port, "GET", "/", "").await.is_ok()
            })
            .await
            {
                Ok(()) => {
                    return Ok(NginxServer {
                        _proc: proc,
                        port,
                        _dir: dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("nginx", last_error))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

// ---------------------------------------------------------------------------------------------
// Pebble (the ACME test CA)
// ---------------------------------------------------------------------------------------------

/// How to start Pebble.
#[derive(Debug, Clone, Copy)]
pub struct PebbleOptions {
    /// The port Pebble's validation authority dials for HTTP-01 challenges (the hub's
    /// redirect listener, or a port nobody serves).
    pub http_port: u16,
    /// Lifetime of the certificates it issues, seconds (`None`: Pebble's default, ~5 years).
    pub validity_secs: Option<u64>,
}

/// Pebble on free loopback ports with its own HTTPS certificate (signed by a CA made here:
/// the Debian package ships no test certificates), real validation (`PEBBLE_VA_ALWAYS_VALID=0`)
/// without the random sleeps (`PEBBLE_VA_NOSLEEP=1`). Names resolve through the system resolver,
/// so certificates are for `localhost`.
pub struct Pebble {
    _proc: Proc,
    port: u16,
    management_port: u16,
    ca_pem: String,
    ca_file: PathBuf,
    _dir: TempDir,
}

impl Pebble {
    /// Starts `pebble` with `opts`.
    pub async fn start(opts: PebbleOptions) -> Result<Pebble> {
        let pebble = which("pebble").ok_or_else(|| missing("pebble", "Debian package `pebble`"))?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pebble-")
            .tempdir()
            .context("creating the Pebble temp dir")?;
        // Pebble's own HTTPS: a CA the test trusts (`ca_file`) and a leaf for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().context("CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test pebble CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).context("CA")?;
        let leaf_key = rcgen::KeyPair::generate().context("leaf key")?;
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let leaf = leaf_params.signed_by(&leaf_key, &*ca).context("leaf")?;
        let ca_file = dir.path().join("ca.pem");
        fs::write(&ca_file, ca.pem())?;
        fs::write(dir.path().join("cert.pem"), leaf.pem())?;
        fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem())?;
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes())?])
            .timeout(IO_TIMEOUT)
            .build()?;
        let log = dir.path().join("pebble.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let (port, management_port, tls_port) = (free_port(), free_port(), free_port());
            let mut config = serde_json::json!({ "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": "cert.pem",
                "privateKey": "key.pem",
                "httpPort": opts.http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }});
            if let Some(v) = opts.validity_secs {
                config["pebble"]["certificateValidityPeriod"] = v.into();
            }
            let conf = dir.path().join("pebble.json");
            fs::write(&conf, serde_json::to_vec_pretty(&config)?)?;
            let mut cmd = Command::new(&pebble);
            cmd.arg("-config")
                .arg(&conf)
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0")
                // Every order validates its challenge (no reused authorizations) and no
                // nonce is rejected at random: each test sees the same protocol run.
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .current_dir(dir.path());
            let mut proc = Proc::spawn("pebble", cmd, &log, dir.path(), 0)?;
            let probe = http.clone();
            match wait_ready(&mut proc, || {
                let probe = probe.clone();
                async move {
                    let url = format!("https://127.0.0.1:{management_port}/roots/0");
                    probe
                        .get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await
            {
                Ok(()) => {
                    return Ok(Pebble {
                        _proc: proc,
                        port,
                        management_port,
                        ca_pem: ca.pem(),
                        ca_file,
                        _dir: dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("pebble", last_error))
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The PEM file of the CA that signed Pebble's own HTTPS certificate (`tls.acme.ca_file`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The root (PEM) Pebble issues certificates under, from its management `/roots/0`.
    pub async fn issuing_root(&self) -> Result<String> {
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?])
            .timeout(IO_TIMEOUT)
            .build()?;
        let r = http
            .get(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management_port
            ))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "/roots/0: {}", r.status());
        Ok(r.text().await?)
    }
}

// ---------------------------------------------------------------------------------------------
// SFTP (OpenSSH sshd)
// ---------------------------------------------------------------------------------------------

/// An OpenSSH `sshd` with its own config and host key, public-key login for the current user
/// (root in CI) and `internal-sftp`.
pub struct SftpServer {
    _proc: Proc,
    port: u16,
    user: String,
    private_key: String,
    data: PathBuf,
    _dir: TempDir,
}

impl SftpServer {
    /// Generates keys and a config in a temp dir and starts `sshd -D -e` on a free loopback port.
    pub async fn start() -> Result<SftpServer> {
        let sshd =
            which("sshd").ok_or_else(|| missing("sshd", "Debian package `openssh-server`"))?;
        let ssh_keygen = which("ssh-keygen")
            .ok_or_else(|| missing("ssh-keygen", "Debian package `openssh-client`"))?;
        // sshd re-executes itself and insists on an absolute path.
        let sshd = if sshd.is_absolute() {
            sshd
        } else {
            fs::canonicalize(&sshd)?
        };
        ensure_privsep_dir();

        let dir = tempfile::Builder::new()
            .prefix("switchyard-sftp-")
            .tempdir()
            .context("creating the SFTP temp dir")?;
        let log = dir.path().join("sshd.log");
        let host_key = dir.path().join("ssh_host_ed25519_key");
        let client_key = dir.path().join("client_ed25519");
        keygen(&ssh_keygen, &host_key).await?;
        keygen(&ssh_keygen, &client_key).await?;
        let authorized_keys = dir.path().join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized_keys)
            .context("writing authorized_keys")?;
        let private_key =
            fs::read_to_string(&client_key).context("reading the client private key")?;
        let data = dir.path().join("data");
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755))?;

        let uid = current_uid();
        let user = account_by_uid(uid)
            .map(|a| a.name)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".to_owned());
        // Without PAM, sshd refuses accounts whose password is locked ("!..."); PAM does not.
        let use_pam = password_locked(&user) && Path::new("/etc/pam.d/sshd").exists();

        let config = dir.path().join("sshd_config");
        let pid_file = dir.path().join("sshd.pid");
        let mut penalties_supported = true;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let write_config = |penalties: bool| -> Result<()> {
                let mut text = format!(
                    "ListenAddress 127.0.0.1:{port}\n\
                     AddressFamily inet\n\
                     HostKey \"{host_key}\"\n\
                     PidFile \"{pid_file}\"\n\
                     AuthorizedKeysFile \"{authorized_keys}\"\n\
                     StrictModes no\n\
                     UsePAM {pam}\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     X11Forwarding no\n\
                     MaxSessions 1000\n\
                     MaxStartups 1000\n\
                     MaxAuthTries 20\n\
                     LoginGraceTime 30\n\
                     LogLevel INFO\n\
                     Subsystem sftp internal-sftp\n",
                    host_key = host_key.display(),
                    pid_file = pid_file.display(),
                    authorized_keys = authorized_keys.display(),
                    pam = if use_pam { "yes" } else { "no" },
                );
                if penalties {
                    // OpenSSH >= 9.8 would otherwise block 127.0.0.1 after failed/aborted logins.
                    text.push_str("PerSourcePenalties no\n");
                }
                fs::write(&config, text).with_context(|| format!("writing {}", config.display()))
            };
            write_config(penalties_supported)?;
            if penalties_supported {
                let check = tokio::process::Command::new(&sshd)
                    .arg("-t")
                    .arg("-f")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .with_context(|| format!("running {} -t", sshd.display()))?;
                if !check.status.success() {
                    let stderr = String::from_utf8_lossy(&check.stderr);
                    if stderr.contains("PerSourcePenalties") {
                        penalties_supported = false;
                        write_config(false)?;
                    } else {
                        bail!(
                            "sshd rejected its config {}: {}",
                            config.display(),
                            stderr.trim()
                        );
                    }
                }
            }

            let mut cmd = Command::new(&sshd);
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .current_dir(dir.path());
            let mut proc = Proc::spawn("sshd", cmd, &log, dir.path(), 0)?;
            match wait_ready(&mut proc, || ssh_banner_ok(port)).await {
                Ok(()) => {
                    return Ok(SftpServer {
                        _proc: proc,
                        port,
                        user,
                        private_key,
                        data,
                        _dir: dir,
                    })
                }
                Err(Failure::Exited(err)) => last_error = Some(err),
                Err(Failure::Fatal(err)) => return Err(err),
            }
        }
        Err(attempts_failed("sshd", last_error))
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The user that logs in (the current user; root in CI).
    pub fn user(&self) -> String {
        self.user.clone()
    }

    /// OpenSSH-format ed25519 private key (no passphrase) authorized for [`SftpServer::user`].
    pub fn private_key(&self) -> String {
        self.private_key.clone()
    }

    /// A directory the user can write, to use as the SFTP root.
    pub fn dir(&self) -> &Path {
        &self.data
    }
}

async fn keygen(ssh_keygen: &Path, path: &Path) -> Result<()> {
    let output = tokio::process::Command::new(ssh_keygen)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "switchyard-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", ssh_keygen.display()))?;
    if !output.status.success() {
        bail!(
            "ssh-keygen -f {} failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// sshd's privilege-separation chroot; missing in containers where sshd never ran.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() && fs::create_dir_all(dir).is_ok() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
}

fn password_locked(user: &str) -> bool {
    fs::read_to_string("/etc/shadow")
        .ok()
        .is_some_and(|shadow| {
            shadow.lines().any(|line| {
                let mut fields = line.split(':');
                fields.next() == Some(user) && fields.next().is_some_and(|pw| pw.starts_with('!'))
            })
        })
}

async fn ssh_banner_ok(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = Vec::new();
        while !buf.contains(&b'\n') && buf.len() < 512 {
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(buf.starts_with(b"SSH-2.0"))
    };
    matches!(
        tokio::time::timeout(IO_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

// ---------------------------------------------------------------------------------------------
// Process guard, readiness, logs
// ---------------------------------------------------------------------------------------------

/// A server process in its own process group. Drop kills the group and reaps the child.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    watchdog: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` as a process-group leader with stdout/stderr appended to `log`, plus a
    /// watchdog that (after sending `stop_signal`, if non-zero) kills the group and removes
    /// `cleanup_dir` once this test process is gone.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        cleanup_dir: &Path,
        stop_signal: i32,
    ) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(log_stdio(log)?)
            .stderr(log_stdio(log)?)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        let watchdog = spawn_watchdog(child.id(), cleanup_dir, stop_signal);
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
            watchdog,
        })
    }
}

impl Proc {
    /// `Err(Failure::Exited)` with the log tail once the process has exited.
    fn check_running(&mut self) -> Result<(), Failure> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Failure::Exited(anyhow!(
                "{} exited during startup ({status}){}",
                self.name,
                log_tail_section(&self.log)
            ))),
            Err(err) => Err(Failure::Fatal(anyhow!("waiting for {}: {err}", self.name))),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.child.id(), 9);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            kill_group(watchdog.id(), 9);
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// `kill -SIG -PGID` through `sh` (a shell builtin, so no procps needed and no `unsafe`).
fn kill_group(pgid: u32, signal: i32) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

const WATCHDOG_SCRIPT: &str = r#"
parent=$1 pgid=$2 dir=$3 sig=$4
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ "$sig" != 0 ]; then
  kill "-$sig" "$pgid" 2>/dev/null
  i=0
  while [ "$i" -lt 50 ] && kill -0 "$pgid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
fi
kill -9 "-$pgid" 2>/dev/null
rm -rf "$dir"
"#;

fn spawn_watchdog(pgid: u32, cleanup_dir: &Path, stop_signal: i32) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("switchyard-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(pgid.to_string())
        .arg(cleanup_dir)
        .arg(stop_signal.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

enum Failure {
    /// The process exited while starting (e.g. the port was taken): worth a retry on another port.
    Exited(anyhow::Error),
    /// Not ready in time: give up.
    Fatal(anyhow::Error),
}

async fn wait_ready<F, Fut>(proc: &mut Proc, mut probe: F) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let timed_out = |proc: &Proc| {
        Failure::Fatal(anyhow!(
            "{} not ready after {:?}{}",
            proc.name,
            READY_TIMEOUT,
            log_tail_section(&proc.log)
        ))
    };
    loop {
        proc.check_running()?;
        // A probe can hang on someone else's listener when the port was taken from under us
        // (then our server exits), so keep watching the child while it runs.
        let mut attempt = std::pin::pin!(probe());
        let ready = loop {
            tokio::select! {
                ready = &mut attempt => break ready,
                () = tokio::time::sleep(POLL_INTERVAL) => {
                    proc.check_running()?;
                    if started.elapsed() >= READY_TIMEOUT {
                        return Err(timed_out(proc));
                    }
                }
            }
        };
        if ready {
            return Ok(());
        }
        if started.elapsed() >= READY_TIMEOUT {
            return Err(timed_out(proc));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn log_stdio(log: &Path) -> Result<Stdio> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    Ok(Stdio::from(file))
}

/// The last lines of a log file, formatted to append to an error message.
fn log_tail_section(log: &Path) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    const MAX_LINES: usize = 60;
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(log) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
        let _ = file.read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
    if tail.trim().is_empty() {
        format!("\n(log {} is empty)", log.display())
    } else {
        format!("\n--- tail of {} ---\n{tail}", log.display())
    }
}

fn attempts_failed(name: &str, last_error: Option<anyhow::Error>) -> anyhow::Error {
    let summary = format!("{name} failed to start ({START_ATTEMPTS} attempts on different ports)");
    match last_error {
        Some(err) => err.context(summary),
        None => anyhow!(summary),
    }
}

fn missing(bin: &str, provider: &str) -> anyhow::Error {
    anyhow!(
        "`{bin}` not found in PATH, /usr/sbin or /usr/lib/postgresql/*/bin: install {provider} \
         (.ci/install-deps.sh does)"
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 for probes and bucket creation
// ---------------------------------------------------------------------------------------------

/// One `Connection: close` request with an empty body; returns the status and the body.
async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<(u16, Vec<u8>)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http_request_to(addr, method, path, extra_headers).await
}

/// Like [`http_request`], to any address.
async fn http_request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<(u16, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
             Connection: close\r\n{extra_headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        // Headers.
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response headers were complete");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .filter(|_| head.starts_with("HTTP/1."))
            .ok_or_else(|| {
                anyhow!(
                    "not an HTTP response: {:?}",
                    head.lines().next().unwrap_or("")
                )
            })?;
        let content_length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        // Body: Content-Length bytes, or until close.
        let mut body = buf.split_off(header_end);
        loop {
            if content_length.is_some_and(|len| body.len() >= len) || method == "HEAD" {
                break;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok((status, body))
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("HTTP {method} {path} timed out"))?
}

// ---------------------------------------------------------------------------------------------
// Accounts and files
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd_accounts() -> Vec<Account> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.to_owned();
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(Account { name, uid, gid })
        })
        .collect()
}

fn account_by_name(name: &str) -> Option<Account> {
    passwd_accounts().into_iter().find(|a| a.name == name)
}

fn account_by_uid(uid: u32) -> Option<Account> {
    passwd_accounts().into_iter().find(|a| a.uid == uid)
}

/// The effective uid, without `unsafe` (the workspace forbids it): `/proc/self` is owned by it.
fn current_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `/usr/lib/postgresql/*/bin`, highest major version first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .filter_map(|path| {
                    let version = path
                        .file_name()?
                        .to_str()?
                        .split('.')
                        .next()?
                        .parse()
                        .ok()?;
                    Some((version, path.join("bin")))
                })
                .filter(|(_, bin)| bin.is_dir())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, bin)| bin).collect()
}
