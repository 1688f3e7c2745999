//! The `hub` command line: `serve`, `migrate`, `apps`, `keys`, `meta-token`, `spokes`, `db` and
//! `dev`.

use crate::config::Config;
use crate::state::now_ms;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use shared::auth::{generate_token, hash_token};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "hub",
    version,
    about = "Switchyard regional hub: the unified storage API"
)]
pub struct Cli {
    /// Configuration file (YAML); `SWITCHYARD_*` variables override it.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API.
    Serve {
        /// Override `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage applications.
    Apps {
        /// What to do with applications.
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage API keys.
    Keys {
        /// What to do with API keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage Meta API tokens.
    MetaToken {
        /// What to do with Meta API tokens.
        #[command(subcommand)]
        command: MetaTokenCommand,
    },
    /// Manage spokes: join tokens, the registry, revocation.
    Spokes {
        /// What to do with spokes.
        #[command(subcommand)]
        command: SpokesCommand,
    },
    /// The PostgreSQL servers: status (primary, replicas, lag) and failover.
    Db {
        /// What to do with the database servers.
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Zero-setup development hub: SQLite, an application, an API key and an `fs` account
    /// under DATA_DIR, created once and reused.
    Dev {
        /// Where everything lives.
        #[arg(long, default_value = "./switchyard-data")]
        data_dir: PathBuf,
        /// Port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Every configured server: primary or replica, timeline, position, replay lag; and the
    /// standbys the primary streams to.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote this region's replica (`database.replica_url`) to primary, when the primary's
    /// region is lost. Every hub finds the new primary by itself if `database.url` lists it.
    Promote {
        /// Promote even though the old primary still answers (only when it is cut off from
        /// every hub: two primaries take diverging writes).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an application and its first API key.
    Create {
        /// Name of the application (1 to 200 characters, no control characters).
        #[arg(long)]
        name: String,
        /// Free-text description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List applications (id, state, name; control characters are shown escaped).
    List {
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for an application (shown once).
    Create {
        /// Application id.
        #[arg(long)]
        app: i64,
    },
    /// List an application's API keys (id, hint, created; keys themselves are never shown).
    List {
        /// Application id.
        #[arg(long)]
        app: i64,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key (the key itself or its id); every hub refuses it within a second.
    Revoke {
        /// Application id.
        #[arg(long)]
        app: i64,
        /// The API key, or its numeric id (from `keys list`).
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpokesCommand {
    /// Join tokens for new spokes.
    Token {
        /// What to do with join tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List enrolled spokes (id, state, region, name, last seen).
    List {
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a spoke: its connections close and it is refused from now on.
    Revoke {
        /// Spoke id (from `spokes list`).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an expiring join token (single use, or good for `--uses` spokes) and print its
    /// join string.
    Create {
        /// Region the spoke serves.
        #[arg(long)]
        region: String,
        /// Name for the spoke.
        #[arg(long)]
        name: Option<String>,
        /// Validity: a whole number with a unit `s`, `m`, `h` or `d` (a bare number is
        /// seconds), at least 1m and at most 30d, e.g. `90s`, `30m`, `1h`, `7d`
        /// [default: `network.join_token_ttl_secs`, 1h].
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        ttl: Option<std::time::Duration>,
        /// How many spokes the token may enroll (1 to 10000), each with its own key pair and
        /// certificate: one token for an autoscaling group.
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::network::enroll::MAX_USES)))]
        uses: u32,
        /// Print one JSON object (`id`, `region`, `name`, `join`, `max_uses`, `expires_at`)
        /// and nothing else, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List join tokens: id, region, name, uses, expiry, state (never the secret).
    List {
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: it enrolls no further spoke (spokes it enrolled keep working).
    /// Revoking a revoked token succeeds.
    Revoke {
        /// Token id (`jt_...`, from `spokes token list`).
        id: String,
    },
}

/// Parses `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let ttl = crate::config::parse_duration(s).ok_or_else(|| {
        match s.trim_start_matches(|c: char| c.is_ascii_digit()) {
            "" | "s" | "m" | "h" | "d" => {
                format!("{s:?} is not a duration like 90s, 30m, 1h or 7d")
            }
            _ => format!("{s:?}: the unit must be s, m, h or d"),
        }
    })?;
    if !(60..=30 * 86_400).contains(&ttl.as_secs()) {
        return Err("the TTL must be between 1 minute and 30 days".into());
    }
    Ok(ttl)
}

#[derive(Debug, Subcommand)]
pub enum MetaTokenCommand {
    /// Create a Meta API token (shown once).
    Create {
        /// A name to tell tokens apart.
        #[arg(long, default_value = "operator")]
        name: String,
    },
}

/// Runs the CLI; errors are printed and become exit code 1.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(cli.config.as_deref(), std::env::vars())?)
}

/// Installs the tracing subscriber from `log.level` (or `SWITCHYARD_LOG`) and `log.format`.
/// Dependencies that print credentials are capped and every event is one line
/// ([`shared::logging`]).
pub fn init_tracing(config: &Config) {
    let spec = std::env::var("SWITCHYARD_LOG")
        .ok()
        .filter(|f| tracing_subscriber::EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| config.log.level.clone());
    shared::logging::init(&spec, config.log.format == "json");
}

fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{text}");
}

/// `text` with control and bidirectional-formatting characters escaped (`\u{1b}`), so a name
/// stored by a client cannot drive the operator's terminal or reorder what it shows.
pub fn printable(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::api::is_bidi_control(c) {
            s.extend(c.escape_unicode());
        } else {
            s.push(c);
        }
    }
    s
}

fn out_json(value: &serde_json::Value) -> anyhow::Result<()> {
    out(&serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Dev { data_dir, port } => {
            return crate::dev::run(data_dir.clone(), *port, cli.config.as_deref()).await;
        }
        Command::Serve { listen } => {
            let mut config = load_config(&cli)?;
            if let Some(l) = listen {
                config.listen = *l;
            }
            init_tracing(&config);
            return crate::run(config).await;
        }
        Command::Db { command } => {
            let config = load_config(&cli)?;
            match command {
                DbCommand::Status { json } => {
                    let v = crate::db::admin::status(&config.database).await?;
                    if *json {
                        out_json(&v)?;
                    } else {
                        out(crate::db::admin::status_text(&v).trim_end());
                    }
                }
                DbCommand::Promote { force } => {
                    out(&crate::db::admin::promote(&config.database, *force).await?);
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let mut config = load_config(&cli)?;
    init_tracing(&config);
    // Operator commands serve nothing: a broken or missing certificate must not stop a key
    // revocation, and ACME has nothing to do here. The URL join strings carry stays the one
    // the served hub has.
    config.public_url = Some(config.public_url());
    config.tls = Default::default();
    let state = crate::open(config).await?;
    let db = &state.db;
    match cli.command {
        Command::Migrate => out("migrations applied"),
        Command::Apps {
            command: AppsCommand::Create { name, description },
        } => {
            crate::api::validate_app_name(&name).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            let app = db.create_app(&name, &description, false, now_ms()).await?;
            let (_, key) = crate::api::create_api_key(&state, app.id).await?;
            out(&format!(
                "application {} ({})\napi key: {key}\n(the key is shown only once)",
                app.id,
                printable(&app.name)
            ));
        }
        Command::Apps {
            command: AppsCommand::List { json },
        } => {
            let (apps, _) = db.list_apps(0, i64::MAX).await?;
            if json {
                let views: Vec<_> = apps.into_iter().map(crate::api::app_view).collect();
                out_json(&serde_json::to_value(views)?)?;
            } else if apps.is_empty() {
                out("no applications");
            } else {
                for a in apps {
                    out(&format!(
                        "{}\t{}\t{}",
                        a.id,
                        if a.active { "active" } else { "inactive" },
                        printable(&a.name)
                    ));
                }
            }
        }
        Command::Keys {
            command: KeysCommand::Create { app },
        } => {
            db.get_app(app).await?.context("no such application")?;
            let (_, key) = crate::api::create_api_key(&state, app).await?;
            out(&format!("api key: {key}\n(the key is shown only once)"));
        }
        Command::Keys {
            command: KeysCommand::List { app, json },
        } => {
            db.get_app(app).await?.context("no such application")?;
            let keys = db.list_api_keys(app).await?;
            if json {
                let views: Vec<_> = keys
                    .into_iter()
                    .map(|k| crate::api::key_view(k, None))
                    .collect();
                out_json(&serde_json::to_value(views)?)?;
            } else if keys.is_empty() {
                out("no keys");
            } else {
                for k in keys {
                    out(&format!(
                        "{}\t{}...\t{}",
                        k.id,
                        printable(&k.hint),
                        crate::model::rfc3339(k.created_ms)
                    ));
                }
            }
        }
        Command::Keys {
            command: KeysCommand::Revoke { app, key },
        } => {
            let deleted = db
                .delete_api_key(app, key.parse().ok(), &hash_token(&key))
                .await?;
            anyhow::ensure!(deleted, "no such key for application {app}");
            out("revoked (every hub refuses it within a second)");
        }
        Command::MetaToken {
            command: MetaTokenCommand::Create { name },
        } => {
            let token = generate_token("mt_");
            db.create_meta_token(&name, &hash_token(token.expose_secret()), now_ms())
                .await?;
            out(&format!(
                "meta token: {}\n(the token is shown only once)",
                token.expose_secret()
            ));
        }
        Command::Spokes {
            command:
                SpokesCommand::Token {
                    command:
                        TokenCommand::Create {
                            region,
                            name,
                            ttl,
                            uses,
                            json,
                        },
                },
        } => {
            let ttl = ttl.unwrap_or(std::time::Duration::from_secs(
                state.config.network.join_token_ttl_secs,
            ));
            let (rec, join) =
                crate::network::enroll::create_token(&state, &region, name.as_deref(), ttl, uses)
                    .await?;
            if json {
                // One line, one object: first-boot scripts capture it whole.
                out(&serde_json::json!({
                    "id": rec.id,
                    "region": rec.region,
                    "name": rec.name,
                    "join": join,
                    "max_uses": rec.max_uses,
                    "expires_at": crate::model::rfc3339(rec.expires_ms),
                })
                .to_string());
            } else {
                let limit = if rec.max_uses == 1 {
                    "single use".to_owned()
                } else {
                    format!("{} uses", rec.max_uses)
                };
                out(&format!(
                    "join token {} for region {} (expires {}, {limit})\n{join}\n\
                     on the new spoke: spoke enroll '{join}' --data-dir /var/lib/switchyard-spoke",
                    rec.id,
                    printable(&rec.region),
                    crate::model::rfc3339(rec.expires_ms)
                ));
            }
        }
        Command::Spokes {
            command:
                SpokesCommand::Token {
                    command: TokenCommand::List { json },
                },
        } => {
            let now = now_ms();
            let tokens = db.list_join_tokens().await?;
            if json {
                let views: Vec<_> = tokens
                    .into_iter()
                    .map(|t| crate::api::network::token_view(t, now))
                    .collect();
                out_json(&serde_json::to_value(views)?)?;
            } else if tokens.is_empty() {
                out("no join tokens");
            } else {
                for t in tokens {
                    let v = crate::api::network::token_view(t, now);
                    out(&format!(
                        "{}\t{}\t{}\t{}\t{}/{} uses\texpires {}",
                        v.id,
                        v.state,
                        printable(&v.region),
                        printable(v.name.as_deref().unwrap_or("-")),
                        v.uses,
                        v.max_uses,
                        v.expires
                    ));
                }
            }
        }
        Command::Spokes {
            command:
                SpokesCommand::Token {
                    command: TokenCommand::Revoke { id },
                },
        } => {
            let revoked = db
                .revoke_join_token(&id, now_ms())
                .await?
                .with_context(|| format!("no join token {}", printable(&id)))?;
            out(if revoked {
                "revoked: the token enrolls no further spoke (spokes it enrolled keep working; \
                 revoke them with `hub spokes revoke ID`)"
            } else {
                "already revoked"
            });
        }
        Command::Spokes {
            command: SpokesCommand::List { json },
        } => {
            let spokes = db.list_spokes().await?;
            if json {
                let views: Vec<_> = spokes
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.id,
                            "name": s.name,
                            "region": s.region,
                            "state": if s.revoked_ms.is_some() { "revoked" } else { "active" },
                            "advertise": s.advertise,
                            "enrolled": crate::model::rfc3339(s.enrolled_ms),
                            "last_seen": s.last_seen_ms.map(crate::model::rfc3339),
                            "join_token": s.join_token_id,
                        })
                    })
                    .collect();
                out_json(&serde_json::Value::Array(views))?;
            } else if spokes.is_empty() {
                out("no spokes");
            } else {
                for s in spokes {
                    out(&format!(
                        "{}\t{}\t{}\t{}\t{}",
                        s.id,
                        if s.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        printable(&s.region),
                        printable(&s.name),
                        s.last_seen_ms
                            .map(crate::model::rfc3339)
                            .unwrap_or_else(|| "never seen".into())
                    ));
                }
            }
        }
        Command::Spokes {
            command: SpokesCommand::Revoke { id },
        } => {
            db.get_spoke(id)
                .await?
                .with_context(|| format!("no spoke {id}"))?;
            let changed = db.revoke_spoke(id, now_ms()).await?;
            out(if changed {
                "revoked (hubs close its connections within a second)"
            } else {
                "already revoked"
            });
        }
        Command::Serve { .. } | Command::Dev { .. } | Command::Db { .. } => {
            unreachable!("handled above")
        }
    }
    state.db.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_ttl, printable};
    use std::time::Duration;

    #[test]
    fn names_are_printed_escaped() {
        assert_eq!(printable("plain name é"), "plain name é");
        assert_eq!(printable("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(printable("x\u{202e}y\n"), "x\\u{202e}y\\u{a}");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("600"), Ok(Duration::from_secs(600)));
        assert!(parse_ttl("5y").is_err());
        assert!(parse_ttl("10s").is_err(), "below a minute");
        assert!(parse_ttl("31d").is_err(), "above 30 days");
        assert!(parse_ttl("h").is_err());
    }
}
