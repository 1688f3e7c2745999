//! `hub dev`: the zero-setup path. Everything lives under one data directory: an SQLite
//! database, a generated master key, an application with an API key, a Meta token, and an `fs`
//! account rooted at the application's own space `DATA_DIR/files/app-<id>` (`DATA_DIR/files` is
//! the allowed root; see `crate::fsroot`). Created once; later runs reuse them.

use crate::config::Config;
use crate::model::NewAccount;
use crate::state::{now_ms, AppState};
use anyhow::Context as _;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use shared::auth::{generate_token, hash_token, MasterKey};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `hub dev` writes to `DATA_DIR/dev-credentials.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevCredentials {
    pub base_url: String,
    pub application_id: i64,
    pub api_key: String,
    pub account_id: i64,
    pub meta_token: String,
}

/// Writes `content` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// The development config for `data_dir` and `port` (a config file, if given, is the base).
pub fn dev_config(data_dir: &Path, port: u16, base: Option<&Path>) -> anyhow::Result<Config> {
    std::fs::create_dir_all(data_dir.join("files"))
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let key_file = data_dir.join("master.key");
    if !key_file.exists() {
        write_private(
            &key_file,
            MasterKey::generate().to_base64().expose_secret().as_bytes(),
        )
        .context("writing the master key")?;
    }
    let mut config = Config::load(base, std::env::vars())?;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.data_dir = data_dir.clone();
    config.secrets.master_key_file = Some(key_file);
    config.secrets.master_key = None;
    // First, so that relative `fs` roots (the dev account's `.`) land under it.
    config
        .storage
        .fs
        .allowed_roots
        .insert(0, data_dir.join("files"));
    // Spokes dial UDP on the same port number as the API's TCP port.
    config.network.quic_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    // A development hub connects to storage servers on this machine (MinIO, a NAS...).
    config.storage.allow_private_endpoints = true;
    Ok(config)
}

/// Creates (or reuses) the development application, key, token and account.
pub async fn bootstrap(state: &AppState) -> anyhow::Result<DevCredentials> {
    let file = state.config.data_dir.join("dev-credentials.json");
    let base_url = state.config.public_url();
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(mut c) = serde_json::from_str::<DevCredentials>(&text) {
            let key_ok =
                state.db.app_for_api_key(&hash_token(&c.api_key)).await? == Some(c.application_id);
            let meta_ok = state
                .db
                .meta_token_exists(&hash_token(&c.meta_token))
                .await?;
            // Opening it also checks its root is still inside the application's space (a data
            // dir from before per-application spaces gets a fresh application and account).
            let acct_ok = state.account(c.application_id, c.account_id).await.is_ok();
            if key_ok && meta_ok && acct_ok {
                if c.base_url != base_url {
                    c.base_url = base_url;
                    write_private(&file, &serde_json::to_vec_pretty(&c)?)?;
                }
                return Ok(c);
            }
        }
    }
    let app = state
        .db
        .create_app("dev", "created by `hub dev`", true, now_ms())
        .await?;
    let (_, api_key) = crate::api::create_api_key(state, app.id).await?;
    let meta = generate_token("mt_");
    state
        .db
        .create_meta_token("dev", &hash_token(meta.expose_secret()), now_ms())
        .await?;
    // `.`: the application's own space under the first allowed root, `DATA_DIR/files`.
    let body = NewAccount {
        service: "fs".into(),
        account: "dev files".into(),
        credentials: serde_json::json!({ "root": "." }),
    };
    let (account, _, _) = crate::api::connect_account(state, app.id, &body)
        .await
        .context("connecting the dev account")?;
    let c = DevCredentials {
        base_url,
        application_id: app.id,
        api_key,
        account_id: account.id,
        meta_token: meta.expose_secret().to_owned(),
    };
    write_private(&file, &serde_json::to_vec_pretty(&c)?)?;
    Ok(c)
}

/// `hub dev`: bootstrap, print how to use it, and serve.
pub async fn run(data_dir: PathBuf, port: u16, base: Option<&Path>) -> anyhow::Result<()> {
    let config = dev_config(&data_dir, port, base)?;
    crate::cli::init_tracing(&config);
    let listen = config.listen;
    let state = crate::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (try --port)"))?;
    let c = bootstrap(&state).await?;
    let msg = format!(
        "Switchyard dev hub\n  base url:       {base}\n  application id: {app}\n  api key:        {key}\n  \
         account id:     {acc}\n  meta token:     {meta}\n  credentials in: {file}\n\n\
         Try:\n  echo hello > hello.txt\n  curl -s -H 'Authorization: APIKey {key}' \\\n    \
         -H 'X-Kloudless-Metadata: {{\"name\": \"hello.txt\", \"parent_id\": \"root\"}}' \\\n    \
         --data-binary @hello.txt {base}/v1/accounts/{acc}/storage/files\n  \
         curl -s -H 'Authorization: APIKey {key}' {base}/v1/accounts/{acc}/storage/folders/root/contents\n",
        base = c.base_url,
        app = c.application_id,
        key = c.api_key,
        acc = c.account_id,
        meta = c.meta_token,
        file = state.config.data_dir.join("dev-credentials.json").display(),
    );
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(msg.as_bytes());
    let _ = o.flush();
    drop(o);
    let background = crate::Background::start(&state).await?;
    crate::serve(state.clone(), listener, crate::shutdown_signal()).await?;
    background.shutdown().await;
    state.db.close().await;
    Ok(())
}
