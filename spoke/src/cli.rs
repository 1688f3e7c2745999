//! The `spoke` command line: `enroll` and `run`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "spoke",
    version,
    about = "Switchyard spoke: moves bytes near storage providers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the network with a join string from `hub spokes token create`.
    #[command(group(clap::ArgGroup::new("join_source").required(true).args(["join", "join_file"])))]
    Enroll {
        /// The join string (`SYJ1-...`). Prefer --join-file: arguments are visible to every
        /// user of the machine while the command runs.
        join: Option<String>,
        /// Read the join string from this file (`-`: standard input) instead.
        #[arg(long, value_name = "PATH")]
        join_file: Option<PathBuf>,
        /// Where the spoke keeps its key, certificate and config.
        #[arg(long, default_value = "./spoke-data")]
        data_dir: PathBuf,
        /// `host:port` where clients and other spokes reach this spoke's data endpoint.
        #[arg(long)]
        advertise: Option<String>,
        /// `ip:port` the data endpoint binds [default: --advertise]; set it when the advertised
        /// address is not on an interface (a cloud instance's public address, NAT).
        #[arg(long, requires = "advertise")]
        listen: Option<String>,
        /// A name for this spoke (default: from the token, or generated).
        #[arg(long)]
        name: Option<String>,
        /// Seconds to wait for the hub.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
    },
    /// Connect to the hubs and run the transfers they assign.
    Run {
        #[arg(long, default_value = "./spoke-data")]
        data_dir: PathBuf,
        /// Announce another protocol version (for testing version mismatches).
        #[arg(long, hide = true, default_value_t = shared::proto::VERSION)]
        protocol_version: u16,
    },
}

/// Runs the CLI; errors are printed and become exit code 1.
pub fn main(cli: Cli) -> ExitCode {
    let tuned = crate::malloc::tune();
    init_tracing();
    if !tuned {
        tracing::warn!("glibc refused the malloc settings (spoke::malloc); its defaults stay");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The join string from a file or standard input (`-`): whitespace trimmed. At most 8 KiB is
/// read (a join string is a few hundred bytes).
fn read_join_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let stdin = path == std::path::Path::new("-");
    let mut text = String::new();
    if stdin {
        std::io::stdin()
            .take(8192)
            .read_to_string(&mut text)
            .context("reading the join string from standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(8192)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    let join = text.trim();
    anyhow::ensure!(
        !join.is_empty(),
        "{} holds no join string",
        if stdin {
            "standard input".to_owned()
        } else {
            path.display().to_string()
        }
    );
    Ok(join.to_owned())
}

/// The shared subscriber: credential-printing dependencies capped, one line per event.
fn init_tracing() {
    let spec = std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into());
    shared::logging::init(&spec, false);
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll {
            join,
            join_file,
            data_dir,
            advertise,
            listen,
            name,
            timeout,
        } => {
            let timeout = std::time::Duration::from_secs(timeout.max(1));
            let join = match (join, join_file) {
                (Some(j), _) => j,
                (None, Some(path)) => read_join_file(&path)?,
                (None, None) => anyhow::bail!("give the join string or --join-file"),
            };
            let j = crate::enroll::enroll(
                &join,
                &data_dir,
                name,
                crate::enroll::Endpoint { advertise, listen },
                timeout,
            )
            .await?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "enrolled spoke {} ({}) in region {}\nhubs: {}\nconfig: {}\nnext: spoke run --data-dir {}",
                j.spoke_id,
                j.name,
                j.region,
                j.hubs.join(", "),
                data_dir.join(crate::config::CONFIG_FILE).display(),
                data_dir.display()
            )?;
            Ok(())
        }
        Command::Run {
            data_dir,
            protocol_version,
        } => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                s.cancel();
            });
            crate::control::run(
                crate::control::RunOptions {
                    data_dir,
                    protocol_version,
                },
                shutdown,
            )
            .await
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
