//! `terraform/`: formatting and validation of every root and module, `terraform test` with a
//! mocked AWS provider, bad input refused at plan time with the variable named, checkov with
//! its reviewed skip list, shellcheck over the boot scripts, and a real apply + destroy of
//! `terraform/aws` (two regions) against moto, checked through the AWS API.
//!
//! Everything runs on a copy of `terraform/` in a temp dir, with a CLI config of its own that
//! installs the AWS provider from the image's filesystem mirror: nothing is downloaded, and
//! nothing (`.terraform/`, state, lock changes) is left in the repository.

use anyhow::{bail, ensure, Context as _, Result};
use e2e::servers::{which, S3Server};
use e2e::terraform_lab::copy_tree;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// Where the image keeps the AWS provider (`find / -name 'terraform-provider-aws*'`):
/// `SWITCHYARD_TF_PLUGIN_DIR`, else `/opt/tf-plugins`.
fn plugin_mirror() -> Result<PathBuf> {
    let dir = std::env::var_os("SWITCHYARD_TF_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/tf-plugins"));
    let aws = dir.join("registry.terraform.io/hashicorp/aws");
    ensure!(
        aws.is_dir(),
        "no AWS provider mirror at {} (set SWITCHYARD_TF_PLUGIN_DIR to the directory holding \
         registry.terraform.io/hashicorp/aws)",
        dir.display()
    );
    Ok(dir)
}

/// A private copy of `terraform/` and a CLI config that installs the AWS provider from the
/// filesystem mirror only (the machine's own `TF_CLI_CONFIG_FILE` is never read).
struct Workspace {
    dir: TempDir,
    cli_config: PathBuf,
}

impl Workspace {
    fn new() -> Result<Workspace> {
        ensure!(
            which("terraform").is_some(),
            "terraform is not on PATH (.ci/install-deps.sh checks for it)"
        );
        let mirror = plugin_mirror()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-terraform-")
            .tempdir()?;
        copy_tree(&repo().join("terraform"), &dir.path().join("terraform"))?;
        let cli_config = dir.path().join("cli.tfrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = {:?}\n    \
                 include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n  direct {{\n    \
                 exclude = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n",
                mirror.display().to_string()
            ),
        )?;
        Ok(Workspace { dir, cli_config })
    }

    /// The copy of `terraform/<rel>`.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("terraform").join(rel)
    }

    /// Runs `terraform ARGS` in `dir` with `env` added, killed after `limit`.
    async fn terraform(
        &self,
        dir: &Path,
        args: &[&str],
        env: &[(&str, String)],
        limit: Duration,
    ) -> Result<Run> {
        let mut cmd = tokio::process::Command::new("terraform");
        cmd.args(args)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("TF_DATA_DIR")
            .env_remove("TF_PLUGIN_CACHE_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, &format!("terraform {}", args.join(" ")), limit).await
    }

    /// `terraform init` in `dir`, from the mirror.
    async fn init(&self, dir: &Path, env: &[(&str, String)]) -> Result<()> {
        self.terraform(
            dir,
            &["init", "-backend=false", "-input=false", "-no-color"],
            env,
            Duration::from_secs(180),
        )
        .await?
        .success()
        .map(drop)
    }
}

/// A finished child process.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn success(self) -> Result<Run> {
        if self.code != Some(0) {
            bail!(
                "{} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                self.code,
                tail(&self.stdout),
                tail(&self.stderr)
            );
        }
        Ok(self)
    }

    /// stdout and stderr with every run of whitespace made one space (terraform wraps
    /// messages at the terminal width).
    fn text(&self) -> String {
        format!("{} {}", self.stdout, self.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(12_000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

async fn run(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Result<Run> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))??;
    Ok(Run {
        what: what.to_owned(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// The root and every module (each directory holding `.tf` files).
fn terraform_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![root.join("aws"), root.join("lab")];
    for entry in std::fs::read_dir(root.join("modules"))? {
        dirs.push(entry?.path());
    }
    dirs.sort();
    Ok(dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fmt_and_validate_every_root_and_module() -> Result<()> {
    let ws = Workspace::new()?;
    let root = ws.path("");
    ws.terraform(
        &root,
        &["fmt", "-check", "-recursive", "-diff", "-no-color"],
        &[],
        Duration::from_secs(60),
    )
    .await?
    .success()?;
    let dirs = terraform_dirs(&root)?;
    ensure!(
        dirs.len() >= 9,
        "expected the aws and lab roots and 7 modules: {dirs:?}"
    );
    for dir in &dirs {
        ws.init(dir, &[]).await?;
        let v = ws
            .terraform(
                dir,
                &["validate", "-no-color"],
                &[],
                Duration::from_secs(120),
            )
            .await?
            .success()?;
        ensure!(
            v.stdout.contains("The configuration is valid"),
            "{}: {}",
            dir.display(),
            v.stdout
        );
    }
    // The committed lock file is the one a fresh init from the mirror writes.
    let committed = std::fs::read_to_string(repo().join("terraform/aws/.terraform.lock.hcl"))
        .context("terraform/aws/.terraform.lock.hcl is committed")?;
    let fresh = std::fs::read_to_string(ws.path("aws/.terraform.lock.hcl"))?;
    assert_eq!(committed, fresh, "terraform init changed the lock file");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_test_with_mocked_aws() -> Result<()> {
    let ws = Workspace::new()?;
    let aws = ws.path("aws");
    ws.init(&aws, &[]).await?;
    let r = ws
        .terraform(&aws, &["test", "-no-color"], &[], Duration::from_secs(900))
        .await?
        .success()?;
    let text = r.text();
    // The checks of tests/aws.tftest.hcl: one apply against the mocks, four refusals, the
    // HTTPS variant and its refusal.
    ensure!(
        text.contains("run \"topology\"... pass") && text.contains("Success! 7 passed, 0 failed"),
        "{text}"
    );
    Ok(())
}

/// The same mocks as `tests/aws.tftest.hcl`, one `run` with the given variables, and no
/// `expect_failures`: the run fails and prints the validation's message.
fn refusal_test(variables: &str) -> String {
    let aliases = [
        "control",
        "us_east_1",
        "us_west_2",
        "eu_west_1",
        "eu_central_1",
        "ap_southeast_1",
        "ap_northeast_1",
    ];
    let mut s = String::new();
    for a in aliases {
        s.push_str(&format!(
            "mock_provider \"aws\" {{\n  alias  = \"{a}\"\n  source = \"./tests/mocks\"\n}}\n"
        ));
    }
    s.push_str(&format!(
        "variables {{\n  parent_zone = \"example.com\"\n  zone = \"sy.example.com\"\n  \
         bin_url = \"https://downloads.example.com/switchyard\"\n{variables}\n}}\n\
         run \"refused\" {{\n  command = plan\n}}\n"
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_at_plan_naming_the_variable() -> Result<()> {
    let ws = Workspace::new()?;
    let aws = ws.path("aws");
    ws.init(&aws, &[]).await?;
    let two = r#"us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
    eu-west = { aws_region = "eu-west-1", cidr = "10.20.0.0/16" }"#;
    let cases = [
        (
            "overlap",
            r#"regions = {
    us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
    eu-west = { aws_region = "eu-west-1", cidr = "10.10.128.0/20" }
  }
  primary_region = "us-east""#
                .to_owned(),
            "var.regions: region CIDRs must not overlap: eu-west (10.10.128.0/20) overlaps \
             us-east (10.10.0.0/16)",
        ),
        (
            "primary",
            format!("regions = {{\n    {two}\n  }}\n  primary_region = \"mars\""),
            "var.primary_region \"mars\" is not a region of var.regions (eu-west, us-east)",
        ),
        (
            "one",
            r#"regions = {
    us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
  }
  primary_region = "us-east""#
                .to_owned(),
            "var.regions must hold at least two regions (it has 1)",
        ),
        (
            "label",
            r#"regions = {
    us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
    "EU_West" = { aws_region = "eu-west-1", cidr = "10.20.0.0/16" }
  }
  primary_region = "us-east""#
                .to_owned(),
            "var.regions: every region name must be a DNS label",
        ),
    ];
    for (name, vars, _) in &cases {
        std::fs::write(
            aws.join(format!("tests/refused_{name}.tftest.hcl")),
            refusal_test(vars),
        )?;
    }
    let mut args = vec!["test".to_owned(), "-no-color".to_owned()];
    for (name, _, _) in &cases {
        args.push(format!("-filter=tests/refused_{name}.tftest.hcl"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = ws
        .terraform(&aws, &args, &[], Duration::from_secs(600))
        .await?;
    let text = r.text();
    ensure!(r.code == Some(1), "every case must fail: {text}");
    ensure!(text.contains("0 passed, 4 failed"), "{text}");
    for (name, _, message) in &cases {
        ensure!(
            text.contains(message),
            "case {name}: no {message:?} in the output:\n{text}"
        );
    }
    // Refused by a validation, at plan time, and nothing about the provider.
    ensure!(
        text.matches("Invalid value for variable").count() == 4,
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkov_finds_nothing_outside_the_reviewed_skip_list() -> Result<()> {
    let config = repo().join("terraform/.checkov.yaml");
    let text = std::fs::read_to_string(&config)?;
    // Every skip says why, on its own line.
    let skips: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- CKV"))
        .collect();
    ensure!(
        !skips.is_empty(),
        "no skip-check list in {}",
        config.display()
    );
    for skip in &skips {
        let reason = skip.split_once('#').map(|(_, r)| r.trim()).unwrap_or("");
        ensure!(
            reason.len() >= 40,
            "skip without a reason in .checkov.yaml: {skip}"
        );
    }
    let checkov = which("checkov").context("checkov is not installed (.ci/install-deps.sh)")?;
    let ws = Workspace::new()?;
    let mut cmd = tokio::process::Command::new(checkov);
    cmd.arg("-d")
        .arg(ws.path(""))
        .arg("--config-file")
        .arg(&config)
        .args(["--compact", "--quiet", "--skip-download"])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false");
    let r = run(cmd, "checkov", Duration::from_secs(600)).await?;
    ensure!(
        r.code == Some(0),
        "checkov found something not in terraform/.checkov.yaml:\n{}\n{}",
        tail(&r.stdout),
        tail(&r.stderr)
    );
    ensure!(r.stdout.contains("Failed checks: 0"), "{}", r.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_and_lab_scripts_pass_shellcheck() -> Result<()> {
    let shellcheck = which("shellcheck").context("shellcheck is not installed")?;
    let boot = repo().join("terraform/boot");
    let mut scripts = Vec::new();
    for entry in std::fs::read_dir(&boot)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "sh") {
            scripts.push(p);
        }
    }
    scripts.sort();
    ensure!(scripts.len() >= 6, "{scripts:?}");
    let mut cmd = tokio::process::Command::new(&shellcheck);
    cmd.args(["-x", "-s", "bash", "-S", "style"])
        .args(&scripts)
        .current_dir(&boot);
    run(cmd, "shellcheck", Duration::from_secs(120))
        .await?
        .success()?;
    // The lab's provisioner scripts too.
    let lab = repo().join("terraform/lab/scripts");
    let mut scripts = Vec::new();
    for entry in std::fs::read_dir(&lab)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "sh") {
            scripts.push(p);
        }
    }
    scripts.sort();
    ensure!(scripts.len() >= 7, "{scripts:?}");
    let mut cmd = tokio::process::Command::new(shellcheck);
    cmd.args(["-x", "-s", "bash", "-S", "style"])
        .args(&scripts)
        .current_dir(&lab);
    run(cmd, "shellcheck (lab)", Duration::from_secs(120))
        .await?
        .success()?;
    Ok(())
}

/// Two regions (the primary in us-east) with one hub and one spoke each, small instances.
const MOTO_TFVARS: &str = r#"
regions = {
  us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16", ami = "ami-12c6146b", hub_count = 1, spoke_count = 1, gateway_instance_type = "t3.small", db_instance_type = "t3.small", hub_instance_type = "t3.small", spoke_instance_type = "t3.small" }
  eu-west = { aws_region = "eu-west-1", cidr = "10.20.0.0/16", ami = "ami-12c6146b", hub_count = 1, spoke_count = 1, gateway_instance_type = "t3.small", db_instance_type = "t3.small", hub_instance_type = "t3.small", spoke_instance_type = "t3.small" }
}
primary_region = "us-east"
parent_zone    = "example.com"
zone           = "sy.example.com"
bin_url        = "https://downloads.example.com/switchyard"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_destroy_two_regions_against_moto() -> Result<()> {
    let ws = Workspace::new()?;
    let moto = S3Server::start().await?;
    // The AWS SDKs and the provider go to moto through the standard variables alone.
    let env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    let python = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args(args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd
    };
    // The parent zone exists before terraform runs, as it would in a real account.
    let mk = python(vec![
        "-c".into(),
        "import boto3; boto3.client('route53').create_hosted_zone(Name='example.com', \
         CallerReference='switchyard-test')"
            .into(),
    ]);
    run(mk, "creating the parent zone", Duration::from_secs(60))
        .await?
        .success()?;

    let aws = ws.path("aws");
    std::fs::write(aws.join("test.auto.tfvars"), MOTO_TFVARS)?;
    ws.init(&aws, &env).await?;
    let apply = ws
        .terraform(
            &aws,
            &[
                "apply",
                "-auto-approve",
                "-input=false",
                "-no-color",
                "-parallelism=20",
            ],
            &env,
            Duration::from_secs(900),
        )
        .await?
        .success()?;
    eprintln!("terraform apply (2 regions, moto): {:?}", apply.took);
    let outputs = ws
        .terraform(
            &aws,
            &["output", "-json", "-no-color"],
            &env,
            Duration::from_secs(60),
        )
        .await?
        .success()?;
    let outputs_file = ws.dir.path().join("outputs.json");
    std::fs::write(&outputs_file, &outputs.stdout)?;
    let check = repo().join("tests/terraform/aws_check.py");
    let checked = |mode: &str| {
        python(vec![
            check.display().to_string(),
            mode.to_owned(),
            outputs_file.display().to_string(),
        ])
    };
    // Before anything is destroyed, "empty" must fail: the check can tell the two apart.
    let not_empty = run(
        checked("empty"),
        "aws_check empty",
        Duration::from_secs(120),
    )
    .await?;
    ensure!(
        not_empty.code == Some(1) && not_empty.stdout.contains("load balancers left"),
        "the emptiness check passed on a deployed network: {}{}",
        not_empty.stdout,
        not_empty.stderr
    );
    run(
        checked("deployed"),
        "aws_check deployed",
        Duration::from_secs(120),
    )
    .await?
    .success()?;

    let destroy = ws
        .terraform(
            &aws,
            &[
                "destroy",
                "-auto-approve",
                "-input=false",
                "-no-color",
                "-parallelism=20",
            ],
            &env,
            Duration::from_secs(600),
        )
        .await?
        .success()?;
    eprintln!("terraform destroy (2 regions, moto): {:?}", destroy.took);
    run(
        checked("empty"),
        "aws_check empty",
        Duration::from_secs(120),
    )
    .await?
    .success()?;
    drop(moto);
    Ok(())
}

/// Runs a boot script of `terraform/boot` with `args`; its stdout.
async fn boot_script(script: &str, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(repo().join("terraform/boot").join(script))
        .args(args);
    Ok(run(cmd, script, Duration::from_secs(60))
        .await?
        .success()?
        .stdout)
}

/// The configs the boot scripts write are accepted by the real `hub` and `tunnel` loaders,
/// with the values terraform passes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_scripts_render_configs_the_binaries_accept() -> Result<()> {
    use base64::Engine as _;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    // hub-config.sh: what hub-boot.sh writes to /etc/switchyard/hub.yaml.
    std::fs::write(d.join("password"), "0123456789abcdef0123456789abcdef")?;
    std::fs::write(
        d.join("dns.json"),
        r#"{"zone":"sy.example.com","nameservers":["ns-eu-west","ns-us-east"],"records":[{"name":"ns-eu-west","type":"A","value":"203.0.113.22"},{"name":"ns-us-east","type":"A","value":"203.0.113.21"},{"name":"ns-us-east","type":"A","value":"203.0.113.31"}]}"#,
    )?;
    let (pw, dns) = (d.join("password"), d.join("dns.json"));
    let yaml = boot_script(
        "hub-config.sh",
        &[
            "--region",
            "eu-west",
            "--zone",
            "sy.example.com",
            "--public-url",
            "http://eu-west.api.sy.example.com",
            "--databases",
            "10.10.128.10,10.20.128.10",
            "--replica",
            "10.20.128.10",
            "--private-ip",
            "10.20.8.5",
            "--join-advertise",
            "switchyard-eu-west-0123.elb.eu-west-1.amazonaws.com:7443",
            "--addresses",
            "203.0.113.22,203.0.113.32",
            "--password-file",
            pw.to_str().context("path")?,
            "--dns-file",
            dns.to_str().context("path")?,
        ],
    )
    .await?;
    let hub_yaml = d.join("hub.yaml");
    std::fs::write(&hub_yaml, &yaml)?;
    let cfg = hub::config::Config::load(Some(&hub_yaml), Vec::new())
        .with_context(|| format!("hub-config.sh wrote a config the hub refuses:\n{yaml}"))?;
    assert_eq!(cfg.region, "eu-west");
    assert_eq!(cfg.listen.port(), 8080);
    assert_eq!(
        cfg.database.url.as_deref(),
        Some("postgres://switchyard:0123456789abcdef0123456789abcdef@10.10.128.10:5432,10.20.128.10:5432/switchyard")
    );
    assert_eq!(
        cfg.database.replica_url.as_deref(),
        Some("postgres://switchyard:0123456789abcdef0123456789abcdef@10.20.128.10:5432/switchyard")
    );
    assert_eq!(
        cfg.dns.listen.map(|a| a.to_string()).as_deref(),
        Some("10.20.8.5:53")
    );
    assert_eq!(cfg.dns.zone, "sy.example.com");
    assert_eq!(cfg.dns.nameservers, ["ns-eu-west", "ns-us-east"]);
    assert_eq!(cfg.dns.addresses.len(), 2);
    assert_eq!(cfg.dns.records.len(), 3);
    // Join strings name the load balancer; each hub's directory entry is its own address, so
    // a spoke holds a session with every hub behind the balancer.
    assert_eq!(
        cfg.network.join_advertise.as_deref(),
        Some("switchyard-eu-west-0123.elb.eu-west-1.amazonaws.com:7443")
    );
    assert_eq!(
        cfg.network.quic_advertise.as_deref(),
        Some("10.20.8.5:7443")
    );
    // With the certificate files: HTTPS on 8443, and the hub accepts it only with https://.
    let tls_yaml = boot_script(
        "hub-config.sh",
        &[
            "--region",
            "eu-west",
            "--zone",
            "sy.example.com",
            "--public-url",
            "https://eu-west.api.sy.example.com",
            "--databases",
            "10.10.128.10",
            "--join-advertise",
            "lb.example:7443",
            "--addresses",
            "203.0.113.22",
            "--private-ip",
            "10.20.8.5",
            "--password-file",
            pw.to_str().context("path")?,
            "--dns-file",
            dns.to_str().context("path")?,
            "--tls-cert-file",
            "/etc/switchyard/tls/cert.pem",
            "--tls-key-file",
            "/etc/switchyard/tls/key.pem",
        ],
    )
    .await?;
    std::fs::write(&hub_yaml, &tls_yaml)?;
    let cfg = hub::config::Config::load(Some(&hub_yaml), Vec::new()).with_context(|| {
        format!("hub-config.sh wrote a TLS config the hub refuses:\n{tls_yaml}")
    })?;
    assert_eq!(cfg.listen.port(), 8443);
    assert!(cfg.tls.enabled());
    assert_eq!(
        cfg.tls.key_file.as_deref(),
        Some(Path::new("/etc/switchyard/tls/key.pem"))
    );

    // A password that would need URL escaping is refused rather than written broken.
    std::fs::write(d.join("password"), "p@ss/word")?;
    let mut bad = tokio::process::Command::new("bash");
    bad.arg(repo().join("terraform/boot/hub-config.sh")).args([
        "--region",
        "eu-west",
        "--zone",
        "sy.example.com",
        "--public-url",
        "http://x",
        "--databases",
        "10.0.0.1",
        "--join-advertise",
        "x:7443",
        "--addresses",
        "192.0.2.1",
        "--private-ip",
        "10.0.0.5",
        "--password-file",
        pw.to_str().context("path")?,
        "--dns-file",
        dns.to_str().context("path")?,
    ]);
    let r = run(bad, "hub-config.sh", Duration::from_secs(60)).await?;
    ensure!(
        r.code == Some(1) && r.stderr.contains("URL-safe"),
        "{}",
        r.stderr
    );

    // tunnel-config.sh: what tunnel-peers.sh writes, before and after a peer's key appears.
    std::fs::write(
        d.join("peers.json"),
        r#"[{"name":"ap-south","cidr":"10.30.0.0/20","address":"10.30.0.10","endpoint":"198.51.100.13:51820"},{"name":"eu-west","cidr":"10.20.0.0/16","address":"10.20.0.10","endpoint":"198.51.100.12:51820"},{"name":"us-east","cidr":"10.10.0.0/16","address":"10.10.0.10","endpoint":"198.51.100.11:51820"}]"#,
    )?;
    std::fs::create_dir(d.join("keys"))?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(d.join("private.key"))?;
        writeln!(f, "{}", b64(&[7u8; 32]))?;
    }
    let (peers, keys) = (d.join("peers.json"), d.join("keys"));
    let args = [
        "--region",
        "us-east",
        "--port",
        "51820",
        "--peers-file",
        peers.to_str().context("path")?,
        "--keys-dir",
        keys.to_str().context("path")?,
    ];
    let none = boot_script("tunnel-config.sh", &args).await?;
    let cfg = tunnel::config::Config::from_yaml(&none, d)
        .with_context(|| format!("tunnel refuses:\n{none}"))?;
    assert!(cfg.peers.is_empty(), "{none}");
    assert_eq!(cfg.interface.addresses[0].to_string(), "10.10.0.10/32");
    std::fs::write(keys.join("eu-west.pub"), format!("{}\n", b64(&[9u8; 32])))?;
    let one = boot_script("tunnel-config.sh", &args).await?;
    let cfg = tunnel::config::Config::from_yaml(&one, d)
        .with_context(|| format!("tunnel refuses:\n{one}"))?;
    assert_eq!(cfg.peers.len(), 1, "{one}");
    let p = &cfg.peers[0];
    assert_eq!(p.name.as_deref(), Some("eu-west"));
    assert_eq!(
        p.endpoint.map(|e| e.to_string()).as_deref(),
        Some("198.51.100.12:51820")
    );
    assert_eq!(p.allowed_ips[0].to_string(), "10.20.0.0/16");
    assert_eq!(cfg.interface.listen_port, 51820);
    Ok(())
}

/// The primary's roles script (`terraform/boot/db-roles.sql`, run by `db-boot.sh`) against a
/// real PostgreSQL: passwords from files become SCRAM verifiers (the text never stored), the
/// replication role exists, and a second run (a rebuilt primary) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_roles_script_against_postgres() -> Result<()> {
    let pg = e2e::servers::Postgres::start().await?;
    let psql = which("psql").context("psql is not installed")?;
    let pwdir = tempfile::tempdir()?;
    std::fs::write(pwdir.path().join("pw"), "aa11bb22cc33dd44ee55ff66")?;
    std::fs::write(pwdir.path().join("rpw"), "0f1e2d3c4b5a69788796a5b4")?;
    let (host, port) = pg
        .host_port()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .context("host:port")?;
    for round in 0..2 {
        let mut cmd = tokio::process::Command::new(&psql);
        cmd.args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "switchyard",
            "-d",
            "postgres",
            "-X",
            "-q",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("pwdir={}", pwdir.path().display()))
        .arg("-f")
        .arg(repo().join("terraform/boot/db-roles.sql"))
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST");
        run(
            cmd,
            &format!("psql -f db-roles.sql (run {round})"),
            Duration::from_secs(60),
        )
        .await?
        .success()?;
    }
    let roles = pg
        .sql(
            "SELECT rolname, rolcanlogin, rolreplication, rolpassword LIKE 'SCRAM-SHA-256$%' \
             FROM pg_authid WHERE rolname IN ('switchyard', 'replicator') ORDER BY 1",
        )
        .await?;
    assert_eq!(roles, "replicator|t|t|t\nswitchyard|t|t|t");
    let leaked = pg
        .sql(
            "SELECT count(*) FROM pg_authid WHERE rolpassword LIKE '%aa11bb22%' \
             OR rolpassword LIKE '%0f1e2d3c%'",
        )
        .await?;
    assert_eq!(leaked, "0", "a password is stored in clear");
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'switchyard'")
            .await?,
        "1"
    );
    Ok(())
}
