//! The `tunnel` command line: `keygen`, `pubkey`, `up` and `status`.

use crate::config::{default_control_socket, Config};
use crate::control;
use crate::gateway::Gateway;
use crate::keys::PrivateKey;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tunnel",
    version,
    about = "Switchyard tunnel: a WireGuard gateway linking regional private networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new private key (base64, as `wg genkey`).
    Keygen,
    /// Read a private key on stdin and print its public key (as `wg pubkey`).
    Pubkey,
    /// Bring up a gateway and run it until SIGTERM or SIGINT (SIGHUP reloads the peers).
    Up {
        /// The gateway's YAML configuration.
        #[arg(long, env = "SWITCHYARD_TUNNEL_CONFIG")]
        config: PathBuf,
    },
    /// Show each peer's endpoint, latest handshake, transfer and handshake RTT.
    Status {
        /// Find the control socket from this configuration.
        #[arg(long, env = "SWITCHYARD_TUNNEL_CONFIG", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The gateway's control socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The interface name (socket `/run/switchyard/tunnel-NAME.sock`).
        #[arg(long, conflicts_with_all = ["config", "socket"])]
        interface: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command; errors go to stderr with their causes.
pub fn main(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen => {
            let k = PrivateKey::generate();
            writeln!(std::io::stdout(), "{}", k.expose_base64())?;
            Ok(())
        }
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut text)
                .context("reading the private key from stdin")?;
            let k = PrivateKey::from_base64(&text).context("stdin is not a private key")?;
            writeln!(std::io::stdout(), "{}", k.public_key())?;
            Ok(())
        }
        Command::Up { config } => up(&config),
        Command::Status {
            config,
            socket,
            interface,
            json,
        } => {
            let path = match (config, socket, interface) {
                (Some(c), _, _) => Config::control_socket_of(&c)?,
                (_, Some(s), _) => s,
                (_, _, Some(i)) => default_control_socket(&i),
                (None, None, None) => only_socket()?,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let status = rt.block_on(control::query(&path))?;
            let mut out = std::io::stdout();
            if json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", control::render(&status))?;
            }
            Ok(())
        }
    }
}

/// The one control socket under /run/switchyard, when `status` is given none.
fn only_socket() -> anyhow::Result<PathBuf> {
    let dir = Path::new("/run/switchyard");
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("tunnel-") && n.ends_with(".sock"))
                })
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "no gateway found under {}; pass --config or --socket",
            dir.display()
        ),
        _ => anyhow::bail!("several gateways run here; pass --config, --socket or --interface"),
    }
}

fn up(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_tracing(&config.interface.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tunnel")
        .build()?;
    rt.block_on(async {
        let gw = Gateway::start(path, config).await?;
        gw.run().await
    })
}

fn init_tracing(default: &str) {
    let filter = std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
