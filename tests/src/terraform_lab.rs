//! Drives `terraform/lab` for the tests and the bench: copies the module to a temp dir, applies
//! it with the binaries given (as root: it makes network namespaces), reads its outputs, runs
//! code inside its namespaces, and destroys it, reporting anything destroy left behind. If a
//! test fails half-way, dropping the [`DeployedLab`] destroys it (and then removes by force
//! whatever is left: processes, namespaces, the state directory).

use crate::netns;
use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Bins {
    pub hub: PathBuf,
    pub spoke: PathBuf,
    pub tunnel: PathBuf,
    pub linkemu: PathBuf,
}

impl Bins {
    /// The binaries next to the running executable's directory's parent (`target/<profile>/`),
    /// for the bench, which `cargo build --release --workspace` puts side by side.
    pub fn beside_current_exe() -> Result<Bins> {
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().context("no parent")?.to_owned();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let get = |n: &str| -> Result<PathBuf> {
            let p = dir.join(n);
            anyhow::ensure!(
                p.exists(),
                "{} is missing: cargo build --release --workspace",
                p.display()
            );
            Ok(p)
        };
        Ok(Bins {
            hub: get("hub")?,
            spoke: get("spoke")?,
            tunnel: get("tunnel")?,
            linkemu: get("linkemu")?,
        })
    }
}

/// What to deploy.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub regions: Vec<String>,
    pub spokes_per_region: u32,
    /// Extra `-var` assignments (`name=value`).
    pub vars: Vec<String>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            regions: vec!["us-east".into(), "eu-west".into(), "ap-south".into()],
            spokes_per_region: 1,
            vars: Vec::new(),
        }
    }
}

/// An S3 server of the lab.
#[derive(Clone, Debug, Deserialize)]
pub struct S3Output {
    pub endpoint: String,
    pub bucket: String,
}

/// The module's outputs.
#[derive(Clone, Debug, Deserialize)]
pub struct Outputs {
    pub hub_urls: BTreeMap<String, String>,
    pub dns_servers: BTreeMap<String, String>,
    pub api_name: String,
    pub meta_token_file: PathBuf,
    pub region_netns: BTreeMap<String, String>,
    pub client_netns: BTreeMap<String, String>,
    pub s3_endpoints: BTreeMap<String, S3Output>,
    pub primary_region: String,
    pub state_dir: PathBuf,
}

/// A lab that `terraform apply` made.
pub struct DeployedLab {
    /// The module copy, terraform's state and the state directory live here.
    dir: tempfile::TempDir,
    pub name: String,
    pub outputs: Outputs,
    /// How long `terraform apply` took.
    pub apply_time: Duration,
    vars: Vec<String>,
    destroyed: bool,
}

/// `terraform/lab` in the source tree.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("terraform")
        .join("lab")
}

/// A `terraform` command in `dir` that never prompts, never calls home and needs no CLI
/// configuration file.
pub fn terraform(dir: &Path, cli_config: &Path) -> Command {
    let mut c = Command::new("terraform");
    c.current_dir(dir)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", cli_config)
        .stdin(Stdio::null());
    c
}

fn run_tf(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running terraform {what}"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        bail!(
            "terraform {what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(out)
}

/// Copies a terraform tree (a few small files, modes kept), leaving out what terraform writes
/// (`.terraform/`, state files).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        let name_str = name.to_string_lossy();
        if name_str == ".terraform" || name_str.contains(".tfstate") {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// The namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|ns| ns.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl DeployedLab {
    /// `terraform init` + `apply` of a copy of the module. On failure the lab is destroyed.
    pub fn apply(bins: &Bins, opts: &LabOptions) -> Result<DeployedLab> {
        let mut lab = DeployedLab::prepare(bins, opts)?;
        let started = Instant::now();
        lab.destroyed = false;
        run_tf(lab.apply_command(), "apply")?;
        lab.apply_time = started.elapsed();
        lab.read_outputs()?;
        Ok(lab)
    }

    /// Starts `terraform apply` in the background (to interrupt it); the lab counts as
    /// applied (dropping it destroys it).
    pub fn spawn_apply(&mut self) -> Result<std::process::Child> {
        self.destroyed = false;
        let mut cmd = self.apply_command();
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(cmd.spawn()?)
    }

    fn apply_command(&self) -> Command {
        let mut apply = self.tf(&["apply", "-auto-approve", "-no-color"]);
        for v in &self.vars {
            apply.args(["-var", v]);
        }
        apply
    }

    fn read_outputs(&mut self) -> Result<()> {
        let out = run_tf(self.tf(&["output", "-json", "-no-color"]), "output")?;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        let values: serde_json::Map<String, serde_json::Value> = raw
            .into_iter()
            .map(|(k, v)| (k, v["value"].clone()))
            .collect();
        self.outputs = serde_json::from_value(serde_json::Value::Object(values))
            .context("reading the lab's outputs")?;
        Ok(())
    }

    /// A copy of the module, initialised, not applied.
    pub fn prepare(bins: &Bins, opts: &LabOptions) -> Result<DeployedLab> {
        let dir = tempfile::Builder::new().prefix("sylab").tempdir()?;
        // PostgreSQL runs as its own account and must reach its directory in there.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        copy_tree(&module_dir(), &dir.path().join("module"))?;
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        for (name, path) in [
            ("hub", &bins.hub),
            ("spoke", &bins.spoke),
            ("tunnel", &bins.tunnel),
            ("linkemu", &bins.linkemu),
        ] {
            std::os::unix::fs::symlink(path, bin_dir.join(name))?;
        }
        std::fs::write(dir.path().join("terraformrc"), "")?;
        // Unique per process and lab, so labs of one test run never collide and a lab left by
        // a killed run never blocks the next one.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let name = format!("sy{}{n}", std::process::id() % 100_000);
        let regions = format!(
            "[{}]",
            opts.regions
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut vars = vec![
            format!("name={name}"),
            format!("bin_dir={}", bin_dir.display()),
            format!("state_dir={}", dir.path().join("state").display()),
            format!("regions={regions}"),
            format!("spokes_per_region={}", opts.spokes_per_region),
        ];
        vars.extend(opts.vars.iter().cloned());
        let lab = DeployedLab {
            outputs: Outputs {
                hub_urls: BTreeMap::new(),
                dns_servers: BTreeMap::new(),
                api_name: String::new(),
                meta_token_file: PathBuf::new(),
                region_netns: BTreeMap::new(),
                client_netns: BTreeMap::new(),
                s3_endpoints: BTreeMap::new(),
                primary_region: String::new(),
                state_dir: dir.path().join("state"),
            },
            dir,
            name,
            apply_time: Duration::ZERO,
            vars,
            destroyed: true,
        };
        run_tf(lab.tf(&["init", "-no-color"]), "init")?;
        Ok(lab)
    }

    fn tf(&self, args: &[&str]) -> Command {
        let mut c = terraform(
            &self.dir.path().join("module"),
            &self.dir.path().join("terraformrc"),
        );
        c.args(args);
        c
    }

    /// `terraform destroy`; how long it took.
    pub fn destroy(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut cmd = self.tf(&["destroy", "-auto-approve", "-no-color"]);
        for v in &self.vars {
            cmd.args(["-var", v]);
        }
        self.destroyed = true;
        run_tf(cmd, "destroy")?;
        Ok(started.elapsed())
    }

    /// The state directory (keys, data, logs, pid files).
    pub fn state_dir(&self) -> &Path {
        &self.outputs.state_dir
    }

    /// The Meta API token.
    pub fn meta_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.outputs.meta_token_file)?
            .trim()
            .to_owned())
    }

    /// A region's namespace.
    pub fn region_ns(&self, region: &str) -> &str {
        &self.outputs.region_netns[region]
    }

    /// The namespace of the client near `region`.
    pub fn client_ns(&self, region: &str) -> &str {
        &self.outputs.client_netns[region]
    }

    /// `program` inside namespace `ns`.
    pub fn command_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// `hub --config <region's config> ARGS` inside the region's namespace; its stdout.
    pub fn hub_cli(&self, bins: &Bins, region: &str, args: &[&str]) -> Result<String> {
        let conf = self.state_dir().join(region).join("hub.yaml");
        let out = netns::run(
            self.command_in(self.region_ns(region), &bins.hub)
                .arg("--config")
                .arg(conf)
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs async `f` on a runtime whose threads live in namespace `ns`: every socket it
    /// opens (HTTP clients, DNS) is the namespace's.
    pub fn block_on_in<T, F>(&self, ns: &str, f: impl FnOnce() -> F + Send + 'static) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>>,
    {
        netns::run_in(ns, move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??
    }

    /// The pids of every daemon the lab started (from its pid files).
    pub fn pids(&self) -> Vec<(String, i32)> {
        let mut v = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.state_dir().join("run")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(what) = name.strip_suffix(".pid") {
                    if let Ok(pid) = std::fs::read_to_string(e.path()) {
                        if let Ok(pid) = pid.trim().parse() {
                            v.push((what.to_owned(), pid));
                        }
                    }
                }
            }
        }
        v
    }

    /// What of this lab exists on the host: its namespaces, their mounts, its interface names
    /// in the root namespace, live processes of `pids`, processes running from the lab's
    /// directory, the state directory.
    pub fn leftovers(&self, pids: &[(String, i32)]) -> Vec<String> {
        let mut left = Vec::new();
        let prefix = format!("{}-", self.name);
        for ns in namespaces_with(&prefix) {
            left.push(format!("namespace {ns}"));
        }
        // The lab makes its interfaces inside its namespaces only; one of its names in the
        // root namespace would be a device that escaped.
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let ifname = line.split(':').nth(1).unwrap_or_default().trim();
                let ifname = ifname.split('@').next().unwrap_or_default();
                if ["wan0", "wg0", "priv0", "privx"].contains(&ifname) {
                    left.push(format!("interface {ifname} in the root namespace"));
                }
            }
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            for m in mounts.lines() {
                if m.contains(&format!("/netns/{prefix}")) {
                    left.push(format!("mount {m}"));
                }
            }
        }
        for (what, pid) in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let state = stat.rsplit_once(')').map_or("", |(_, r)| r.trim());
                // A zombie is gone but for its entry, which init reaps when it gets to it
                // (slowly in some sandboxes).
                if !state.starts_with('Z') {
                    left.push(format!("process {what} (pid {pid}, {state:.20}, {netns})"));
                }
            }
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                // (A zombie's command line reads empty.)
                if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
                    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if cmdline.contains(&dir) && !cmdline.starts_with("terraform") {
                        left.push(format!("process {pid}: {cmdline}"));
                    }
                }
            }
        }
        if self.state_dir().exists() {
            left.push(format!("directory {}", self.state_dir().display()));
        }
        left
    }

    /// Removes by force what a failed destroy left (processes, namespaces).
    fn force_cleanup(&self) {
        for (_, pid) in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let prefix = format!("{}-", self.name);
        for ns in namespaces_with(&prefix) {
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

impl Drop for DeployedLab {
    fn drop(&mut self) {
        if !self.destroyed {
            if let Err(e) = self.destroy() {
                eprintln!("destroying the lab failed: {e:#}");
            }
        }
        self.force_cleanup();
    }
}

/// A lab hub as the tests call it: through a name or an address, with an application's API
/// key and the Meta token. Build it on a runtime inside a lab namespace
/// ([`DeployedLab::block_on_in`]).
pub struct LabHub {
    pub base: String,
    pub http: reqwest::Client,
    pub api_key: String,
    pub meta_token: String,
}

impl LabHub {
    /// A hub reached at `base` (`http://host:port`); `resolve` pins a name to an address as a
    /// resolver's answer would.
    pub fn new(
        base: &str,
        resolve: Option<(&str, std::net::SocketAddr)>,
        api_key: &str,
        meta_token: &str,
    ) -> Result<LabHub> {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60));
        if let Some((name, addr)) = resolve {
            b = b.resolve(name, addr);
        }
        Ok(LabHub {
            base: base.trim_end_matches('/').to_owned(),
            http: b.build()?,
            api_key: api_key.to_owned(),
            meta_token: meta_token.to_owned(),
        })
    }
}

impl crate::HubApi for LabHub {
    fn base(&self) -> &str {
        &self.base
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
    fn api_key(&self) -> &str {
        &self.api_key
    }
    fn meta_token(&self) -> &str {
        &self.meta_token
    }
}

/// A PostgreSQL client tool from the server's bindir (Debian keeps them out of PATH).
pub fn pg_tool(name: &str) -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
