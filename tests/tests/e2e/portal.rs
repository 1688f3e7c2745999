//! The developer portal (`/ui/`) in a real Chromium: sign in with the meta token (the session
//! in an HttpOnly cookie, never readable by the page), create an application whose name is
//! markup (shown as text, nothing runs), create an API key (shown once, and it works against
//! the API), revoke it; axe-core finds no serious or critical violation on any page. Over
//! HTTP: signed-out pages send you to sign in, a wrong token is refused, and a change without
//! the session's CSRF token is refused.

use e2e::TestHub;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::{json, Value};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// A client without credentials that does not follow redirects.
fn client() -> reqwest::Client {
    e2e::no_redirect_client()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_manages_applications_and_keys_in_chromium() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let shots = tempfile::tempdir().expect("tmp");
    let base = hub.base_url.clone();
    let run = e2e::browser::run(json!({
        "screenshots": shots.path(),
        "steps": [
            {"goto": format!("{base}/ui/")},
            {"wait_url_prefix": format!("{base}/ui/login")},
            {"axe": "login"},
            {"screenshot": "portal-login"},
            {"fill": {"#f-token": hub.creds.meta_token}},
            {"submit": "#login"},
            {"wait_url_prefix": format!("{base}/ui/apps")},
            {"eval": "document.cookie"},
            {"axe": "apps"},
            {"fill": {"#f-name": HOSTILE}},
            {"submit": "#new-app"},
            {"wait_url_prefix": format!("{base}/ui/apps/")},
            {"text": "#app-name"},
            {"axe": "app"},
            {"screenshot": "portal-app"},
            {"submit": "#new-key-form"},
            {"text": "#new-key"},
            {"screenshot": "portal-new-key"},
            {"click": "header.bar a"},
            {"click": "#apps tbody tr:last-child a"},
            {"eval": "document.getElementById('new-key') === null && document.querySelectorAll('#keys tbody tr').length"},
            {"submit": "#keys tbody tr form"},
            {"eval": "document.querySelectorAll('#keys tbody tr').length"},
            {"expect_no_dialog": true}
        ]
    }))
    .await
    .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    for page in ["login", "apps", "app"] {
        assert_eq!(run["axe"][page], json!([]), "{page}: {run}");
    }
    assert_eq!(run["dialogs"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["console_errors"], json!([]), "{run}");
    // The session cookie is HttpOnly: the page's script sees nothing.
    assert_eq!(run["evals"][0], "", "{run}");
    assert_eq!(run["texts"]["#app-name"], HOSTILE, "{run}");
    let key = run["texts"]["#new-key"]
        .as_str()
        .expect("the key")
        .to_owned();
    assert!(key.starts_with("sk_"), "{key}");
    // Shown once: the page reached again lists the key by its hint only.
    assert_eq!(run["evals"][1], 1, "{run}");
    assert_eq!(run["evals"][2], 0, "{run}");
    // Revoked: the key no longer opens the API.
    let r = client()
        .get(hub.url("/v1/accounts"))
        .header("Authorization", format!("APIKey {key}"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 401);
    assert!(shots.path().join("portal-new-key.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_refuses_strangers_and_forged_forms() {
    let hub = TestHub::start().await.expect("hub");
    let c = client();
    for path in ["/ui/", "/ui/apps", "/ui/apps/1"] {
        let r = c.get(hub.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()[LOCATION], "/ui/login", "{path}");
    }
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).expect("form");
    let login = |token: &str| {
        c.post(hub.url("/ui/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token)]))
            .send()
    };
    assert_eq!(login("mt_wrong").await.expect("login").status(), 401);
    let r = login(&hub.creds.meta_token).await.expect("login");
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str().expect("cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("pair").to_owned();
    let page = c
        .get(hub.url("/ui/apps"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("apps");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        !html.contains(&hub.creds.meta_token),
        "the page holds no token"
    );
    // A change without (or with another) CSRF token is refused, and nothing is created.
    for csrf in ["", "AAAA"] {
        let r = c
            .post(hub.url("/ui/apps"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[("name", "forged"), ("csrf", csrf)]))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 403);
    }
    let apps: Value = c
        .get(hub.url("/v1/meta/applications"))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(!apps.to_string().contains("forged"), "{apps}");
}

/// A page expression that waits (polling, at most 10 s) until `cond` holds, then gives `value`.
fn until(cond: &str, value: &str) -> String {
    format!(
        "new Promise((d) => {{ const t0 = Date.now(); const look = () => {{
           if (({cond}) || Date.now() - t0 > 10000) return d({value});
           setTimeout(look, 20); }}; look(); }})"
    )
}

/// Signs in (the first steps of a browser run).
fn sign_in(hub: &TestHub) -> Vec<Value> {
    let base = &hub.base_url;
    vec![
        json!({"goto": format!("{base}/ui/login")}),
        json!({"fill": {"#f-token": hub.creds.meta_token}}),
        json!({"submit": "#login"}),
        json!({"wait_url_prefix": format!("{base}/ui/apps")}),
    ]
}

/// The date (`YYYY-MM-DD`, UTC) a certificate file's validity ends.
fn cert_not_after_date(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).expect("the spoke's certificate");
    let der = shared::pki::certs(&pem).expect("pem")[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let at = time::OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .expect("time");
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

/// The console in Chromium: the spoke appears healthy, and a running transfer's bar moves
/// (several values between empty and full are seen) and reaches done. The hub's row shows its
/// version and database role; the spoke's row the expiry date of the certificate it holds
/// (read here from its certificate file), flagged in words since it expires within 7 days.
/// axe finds nothing serious; no CSP violation (the page runs only its own script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_healthy_spoke_and_a_moving_transfer() {
    use crate::offload::{hub_with_spoke, hub_yaml, setup_seeded, start_copy};
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    // 48 MiB at 8 MiB/s: about six seconds of progress to watch. Spoke certificates of 5 days.
    let yaml = format!("{}  spoke_cert_days: 5\n", hub_yaml(Some(8 << 20), 8));
    let (hub, _root, spoke) = hub_with_spoke(yaml, "console").await;
    let cert_date = cert_not_after_date(&spoke.dir.join("spoke.crt"));
    let s = setup_seeded(&hub, 48 << 20, 5).await;
    let id = start_copy(&hub, &s).await;
    let shots = tempfile::tempdir().expect("tmp");
    let watch = format!(
        "new Promise((done) => {{
           const seen = new Set(); let healthy = false; const t0 = Date.now();
           const look = () => {{
             const sp = document.querySelector('#spokes tr[data-spoke=\"{spoke}\"] td:nth-child(3)');
             healthy = healthy || (sp !== null && sp.textContent === 'healthy');
             const tr = document.querySelector('#transfers tr[data-transfer=\"{id}\"]');
             if (tr) {{
               const bar = tr.querySelector('progress');
               if (bar.value > 0 && bar.value < bar.max) seen.add(bar.value);
               if (tr.dataset.state === 'done') return done({{healthy, moving: seen.size, done: bar.value === bar.max}});
             }}
             if (Date.now() - t0 > 80000) return done({{healthy, moving: seen.size, done: false}});
             setTimeout(look, 50);
           }};
           look();
         }})",
        spoke = spoke.id
    );
    let rows = format!(
        "(() => {{
           const hub = document.querySelector('#hubs tbody tr');
           const sp = document.querySelector('#spokes tr[data-spoke=\"{spoke}\"]');
           return {{hub: hub ? [...hub.cells].map((c) => c.textContent) : null,
                    cert: sp ? sp.cells[7].textContent : null,
                    cert_flagged: sp ? sp.cells[7].classList.contains('bad') : null}};
         }})()",
        spoke = spoke.id
    );
    let mut steps = sign_in(&hub);
    steps.extend([
        json!({"goto": hub.url("/ui/network")}),
        json!({"eval": watch, "timeout_ms": 90000}),
        json!({"eval": rows}),
        json!({"screenshot": "console"}),
        json!({"axe": "console"}),
    ]);
    let run = e2e::browser::run(json!({
        "screenshots": shots.path(), "deadline_ms": 110000, "steps": steps
    }))
    .await
    .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    let seen = &run["evals"][0];
    assert_eq!(seen["healthy"], true, "{run}");
    assert!(seen["moving"].as_u64().unwrap_or(0) >= 2, "{run}");
    assert_eq!(seen["done"], true, "{run}");
    // The hub's row: API, region, health, last seen, version, database role, replica lag
    // (none: SQLite has no replica).
    let cells = &run["evals"][1]["hub"];
    assert_eq!(cells[0], hub.state.config.public_url(), "{run}");
    assert_eq!(cells[2], "healthy", "{run}");
    assert_eq!(cells[4], env!("CARGO_PKG_VERSION"), "{run}");
    assert_eq!(cells[5], "sqlite", "{run}");
    assert_eq!(cells[6], "", "{run}");
    // The spoke's certificate: its date, and flagged (5 days, so 4 whole days left).
    assert_eq!(
        run["evals"][1]["cert"],
        format!("{cert_date} (expires in 4 days)"),
        "{run}"
    );
    assert_eq!(run["evals"][1]["cert_flagged"], true, "{run}");
    assert!(shots.path().join("console.png").is_file());
    assert_eq!(run["axe"]["console"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["console_errors"], json!([]), "{run}");
}

/// The must-reach: with 1,000 transfers and 100 spokes in the database the console's
/// first render is under a second and an update under 100 ms of main-thread work, measured in
/// Chromium with the Performance API (`console-first-render`, `console-update`). Runs in the
/// timing group, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_smooth_with_1000_transfers_and_100_spokes() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let db = &hub.state.db;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for i in 0..100 {
        let id = db
            .create_spoke(
                &format!("spoke-{i:03}"),
                &format!("region-{}", i % 5),
                &format!("fp-{i}"),
                None,
                "none",
                1,
            )
            .await
            .expect("spoke")
            .expect("a free name");
        // Certificates: half for 30 days, a tenth for 3 (flagged), the rest unknown.
        let days = match i % 10 {
            1 => Some(3),
            0 | 2 | 4 | 6 | 8 => Some(30),
            _ => None,
        };
        if let Some(d) = days {
            db.set_spoke_certificate(id, &format!("fp-{i}"), Some(now + d * 86_400_000))
                .await
                .expect("certificate");
        }
    }
    for i in 0..1000i64 {
        let t = db
            .create_transfer(
                &hub::db::NewTransfer {
                    app_id: hub.creds.application_id,
                    kind: "copy",
                    src_account: hub.creds.account_id,
                    src_path: &format!("in/{i}.bin"),
                    dst_account: hub.creds.account_id,
                    dst_path: &format!("out/{i}.bin"),
                    size: (i + 1) << 20,
                    part_size: 8 << 20,
                    owner: "perf",
                    src_url: None,
                },
                "perf-holder",
                i64::MAX / 2,
                1,
            )
            .await
            .expect("transfer");
        // Half of them running part-way, so every update has bars to move.
        if i % 2 == 0 {
            let lease = hub::db::Lease {
                holder: "perf-holder".into(),
                epoch: t.lease_epoch,
            };
            db.set_transfer_progress(t.id, &lease, i << 19, 2)
                .await
                .expect("progress");
        }
    }
    let wait = "new Promise((done) => {
        const t0 = Date.now();
        const look = () => {
          const updates = performance.getEntriesByName('console-update').map((e) => e.duration);
          const first = performance.getEntriesByName('console-first-render')[0];
          if (updates.length >= 4 || Date.now() - t0 > 20000) {
            const certs = [...document.querySelectorAll('#spokes tbody tr')].map((tr) => tr.cells[7]).filter(Boolean);
            return done({first: first ? first.startTime : null, updates,
                         rows: document.querySelectorAll('#transfers tbody tr').length,
                         spokes: document.querySelectorAll('#spokes tbody tr').length,
                         dated: certs.filter((c) => /^\\d{4}-\\d{2}-\\d{2}$/.test(c.textContent)).length,
                         flagged: certs.filter((c) => c.classList.contains('bad')
                                               && / \\(expires in 2 days\\)$/.test(c.textContent)).length});
          }
          setTimeout(look, 100);
        };
        look();
      })";
    let mut steps = sign_in(&hub);
    steps.extend([
        json!({"goto": hub.url("/ui/network")}),
        json!({"eval": wait, "timeout_ms": 30000}),
    ]);
    let run = e2e::browser::run(json!({"steps": steps}))
        .await
        .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    let m = &run["evals"][0];
    assert_eq!(m["rows"], 1000, "{m}");
    assert_eq!(m["spokes"], 100, "{m}");
    // 30-day certificates show their date; 3-day ones are flagged (2 whole days and some left).
    assert_eq!(m["dated"], 50, "{m}");
    assert_eq!(m["flagged"], 10, "{m}");
    let first = m["first"].as_f64().expect("first render");
    let updates: Vec<f64> = m["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    eprintln!("console with 1000 transfers and 100 spokes: first render at {first:.0} ms, updates {updates:.1?} ms");
    assert!(first < 1000.0, "first render at {first} ms");
    // The first update is the first render (every row made); the next ones are updates.
    let worst = updates.iter().skip(1).copied().fold(0.0, f64::max);
    assert!(
        updates.len() >= 3 && worst < 100.0,
        "updates {updates:?} ms"
    );
}

/// A hub on PostgreSQL reading a streaming replica publishes it in the hub directory: the
/// console's JSON shows its version, `postgres replica-reading` and the replica lag it
/// measured (a number of ms). With the replica's replay paused, the lag it publishes grows past
/// `database.max_replica_lag_ms` and the role says it reads the primary; resumed, it reads the
/// replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_reports_the_database_role_and_replica_lag_of_each_hub() {
    use e2e::servers::Postgres;
    use std::time::{Duration, Instant};
    let primary = Postgres::start().await.expect("primary");
    let replica = primary
        .replica("console", None, None)
        .await
        .expect("replica");
    let hub = TestHub::start_with(e2e::HubOptions {
        database_url: Some(primary.url()),
        yaml: Some(format!(
            "database:\n  url: \"{}\"\n  replica_url: \"{}\"\n  read_your_writes_wait_ms: 300\n  \
             max_replica_lag_ms: 800\n",
            primary.url(),
            replica.url()
        )),
        ..Default::default()
    })
    .await
    .expect("hub");
    let cookie = http_sign_in(&hub).await;
    let me = hub
        .state
        .network
        .advertise()
        .expect("QUIC endpoint")
        .to_owned();
    // This hub's row of `/ui/network.json` once `want` holds (the hub refreshes it every 5 s).
    let row_when = |what: &'static str, want: fn(&Value) -> bool| {
        let (cookie, me) = (cookie.clone(), me.clone());
        let url = hub.url("/ui/network.json");
        async move {
            let t0 = Instant::now();
            loop {
                let r = client()
                    .get(&url)
                    .header("Cookie", &cookie)
                    .send()
                    .await
                    .expect("console json");
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.expect("json");
                let row = v["hubs"]
                    .as_array()
                    .expect("hubs")
                    .iter()
                    .find(|h| h["quic"] == me.as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
                if want(&row) {
                    return row;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{what} never showed: {v}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let row = row_when("the replica-reading role with a lag", |h| {
        h["db_role"] == "postgres replica-reading" && h["replica_lag_ms"].is_i64()
    })
    .await;
    eprintln!("hub row while reading the replica: {row}");
    assert_eq!(row["version"], env!("CARGO_PKG_VERSION"), "{row}");
    assert_eq!(row["healthy"], true, "{row}");
    assert!(
        (0..800).contains(&row["replica_lag_ms"].as_i64().unwrap_or(-1)),
        "{row}"
    );

    replica
        .sql("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    let row = row_when("the lag of a paused replica", |h| {
        h["db_role"] == "postgres primary (replica lagging)"
            && h["replica_lag_ms"].as_i64().is_some_and(|ms| ms > 800)
    })
    .await;
    eprintln!("hub row with replay paused: {row}");
    replica
        .sql("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    row_when("the replica read again", |h| {
        h["db_role"] == "postgres replica-reading"
    })
    .await;
}

/// The file explorer in Chromium, on the dev account, through the public API only: a 40 MiB
/// file uploaded as an upload session (the progress bar takes several values on the way), its
/// download link serving it byte-identical, a file named with markup shown as text, a folder
/// created, a rename, a search, a delete, and a move: the Move dialog browses the folders (axe
/// checks it open), one is chosen, and the API then finds the file in that folder and no
/// longer at the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_uploads_downloads_renames_searches_and_deletes() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let (app, acc) = (hub.creds.application_id, hub.creds.account_id);
    let size = 40 << 20;
    // The same bytes in the page and here.
    let gen = format!(
        "(() => {{ const b = new Uint8Array({size}); let x = 7;
           for (let i = 0; i < b.length; i++) {{ x = (Math.imul(x, 1103515245) + 12345) >>> 0; b[i] = x >>> 24; }}
           return b; }})()"
    );
    let mut expect = vec![0u8; size];
    let mut x: u32 = 7;
    for b in expect.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *b = (x >> 24) as u8;
    }
    let upload = |name: &str, bytes: &str| {
        format!(
            "new Promise((done) => {{
               const bar = document.getElementById('upload-progress'); const seen = new Set();
               const iv = setInterval(() => {{ if (bar.value > 0 && bar.value < bar.max) seen.add(bar.value); }}, 5);
               const dt = new DataTransfer(); dt.items.add(new File([{bytes}], {name:?}));
               const input = document.getElementById('upload'); input.files = dt.files;
               input.dispatchEvent(new Event('change'));
               const t0 = Date.now();
               const look = () => {{
                 const note = document.getElementById('upload-status').textContent;
                 if (note.startsWith('Uploaded') || note.startsWith('Not') || Date.now() - t0 > 60000) {{
                   clearInterval(iv);
                   done({{note, seen: seen.size}});
                 }} else setTimeout(look, 20);
               }};
               look();
             }})"
        )
    };
    let until_row = |name: &str| {
        format!(
            "new Promise((done) => {{ const t0 = Date.now(); const look = () => {{
               const r = [...document.querySelectorAll('#files tbody tr')].find((tr) => tr.dataset.name === {name:?});
               if (r || Date.now() - t0 > 10000) return done(r ? r.cells[0].textContent : null);
               setTimeout(look, 20); }}; look(); }})"
        )
    };
    let click_in_row = |name: &str, label: &str| {
        format!(
            "(() => {{ const r = [...document.querySelectorAll('#files tbody tr')].find((tr) => tr.dataset.name === {name:?});
               const b = [...r.querySelectorAll('button')].find((b) => b.textContent === {label:?}); b.click(); return true; }})()"
        )
    };
    let mut steps = sign_in(&hub);
    steps.extend([
        json!({"goto": hub.url(&format!("/ui/apps/{app}/accounts/{acc}"))}),
        json!({"eval": until_row("__none__")}),
        json!({"axe": "explorer"}),
        json!({"eval": upload("big.bin", &gen), "timeout_ms": 70000}),
        json!({"eval": until_row("big.bin")}),
        json!({"eval": upload(HOSTILE, "'tiny'"), "timeout_ms": 20000}),
        json!({"eval": until_row(HOSTILE)}),
        json!({"fill": {"#folder-name": "reports"}}),
        json!({"eval": "(() => { document.getElementById('mkdir').requestSubmit(); return true; })()"}),
        json!({"eval": until_row("reports")}),
        json!({"eval": click_in_row("big.bin", "Download")}),
        // The link the explorer made, fetched now (before the rename and delete below): its
        // SHA-256 in the page.
        json!({"eval": "new Promise((d) => { const t0 = Date.now(); const look = async () => {
            const a = document.querySelector('a.download-link');
            if (!a) return Date.now() - t0 > 10000 ? d(null) : setTimeout(look, 20);
            const b = await (await fetch(a.href)).arrayBuffer();
            const h = await crypto.subtle.digest('SHA-256', b);
            d({len: b.byteLength, sha: [...new Uint8Array(h)].map((x) => x.toString(16).padStart(2, '0')).join('')});
          }; look(); })", "timeout_ms": 30000}),
        json!({"eval": click_in_row("big.bin", "Rename")}),
        json!({"eval": "(() => { const f = document.querySelector('form.rename'); f.querySelector('input').value = 'renamed.bin'; f.requestSubmit(); return true; })()"}),
        json!({"eval": until_row("renamed.bin")}),
        json!({"fill": {"#q": "renamed"}}),
        json!({"eval": "(() => { document.getElementById('search').requestSubmit(); return true; })()"}),
        json!({"eval": until(
            "document.getElementById('status').textContent.includes('found for')",
            "[...document.querySelectorAll('#files tbody tr')].map((tr) => tr.dataset.name)",
        )}),
        json!({"eval": click_in_row("renamed.bin", "Delete")}),
        json!({"eval": click_in_row("renamed.bin", "Confirm delete")}),
        json!({"eval": until(
            "/^(Deleted|Not deleted)/.test(document.getElementById('status').textContent)",
            "document.getElementById('status').textContent",
        )}),
        json!({"screenshot": "explorer"}),
        // Move: a small file into `reports`, through the Move dialog.
        json!({"eval": upload("notes.txt", "'notes'"), "timeout_ms": 20000}),
        json!({"eval": until_row("notes.txt")}),
        json!({"eval": click_in_row("notes.txt", "Move")}),
        json!({"eval": until(
            "document.getElementById('move').open && [...document.querySelectorAll('#move-folders li')].some((li) => li.dataset.name === 'reports')",
            "({open: document.getElementById('move').open, title: document.getElementById('move-title').textContent,
               folders: [...document.querySelectorAll('#move-folders li')].map((li) => li.dataset.name),
               here_disabled: document.getElementById('move-here').disabled})",
        )}),
        json!({"axe": "explorer-move"}),
        json!({"screenshot": "explorer-move"}),
        json!({"eval": "(() => { [...document.querySelectorAll('#move-folders li')].find((li) => li.dataset.name === 'reports').querySelector('button').click(); return true; })()"}),
        json!({"eval": until(
            "document.getElementById('move-here').textContent === 'Move into reports' && !document.getElementById('move-here').disabled",
            "(() => { document.getElementById('move-here').click(); return document.querySelector('#move-crumbs').textContent; })()",
        )}),
        json!({"eval": until(
            "/^(Moved|Not moved)/.test(document.getElementById('status').textContent) || /^Not moved/.test(document.getElementById('move-status').textContent)",
            "({status: document.getElementById('status').textContent, dialog: document.getElementById('move-status').textContent,
               open: document.getElementById('move').open,
               rows: [...document.querySelectorAll('#files tbody tr')].map((tr) => tr.dataset.name)})",
        )}),
        json!({"expect_no_dialog": true}),
    ]);
    let shots = tempfile::tempdir().expect("tmp");
    let run = e2e::browser::run(
        json!({"screenshots": shots.path(), "deadline_ms": 110000, "steps": steps}),
    )
    .await
    .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    let ev = &run["evals"];
    assert_eq!(run["axe"]["explorer"], json!([]), "{run}");
    assert!(
        ev[1]["note"].as_str().unwrap_or("").starts_with("Uploaded"),
        "{run}"
    );
    assert!(
        ev[1]["seen"].as_u64().unwrap_or(0) >= 2,
        "the bar never moved: {run}"
    );
    assert_eq!(ev[4], HOSTILE, "{run}");
    assert_eq!(ev[8]["len"], expect.len(), "{run}");
    assert_eq!(ev[8]["sha"], e2e::sha256_hex(&expect), "{run}");
    assert_eq!(ev[13], json!(["renamed.bin"]), "{run}");
    assert!(
        ev[16]
            .as_str()
            .unwrap_or("")
            .starts_with("Deleted renamed.bin"),
        "{run}"
    );
    // The Move dialog: titled with the file, offering `reports`, not yet allowing a move
    // into the folder the file is in; the move closed it and took the row away.
    assert_eq!(ev[20]["open"], true, "{run}");
    assert_eq!(ev[20]["title"], "Move notes.txt", "{run}");
    assert_eq!(ev[20]["folders"], json!(["reports"]), "{run}");
    assert_eq!(ev[20]["here_disabled"], true, "{run}");
    assert_eq!(run["axe"]["explorer-move"], json!([]), "{run}");
    assert_eq!(ev[22], "root / reports", "{run}");
    assert_eq!(ev[23]["status"], "Moved notes.txt into reports.", "{run}");
    assert_eq!(ev[23]["open"], false, "{run}");
    assert!(
        !ev[23]["rows"]
            .as_array()
            .expect("rows")
            .contains(&json!("notes.txt")),
        "{run}"
    );
    assert!(shots.path().join("explorer-move.png").is_file());
    assert_eq!(run["dialogs"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["console_errors"], json!([]), "{run}");
    // The token the page used is the account's and short-lived: the API key's view of the
    // account shows the folder and the markup-named file, not the deleted one.
    let list: Value = hub
        .req(
            reqwest::Method::GET,
            &hub.acc("/storage/folders/root/contents"),
        )
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(
        names.contains(&"reports")
            && names.contains(&HOSTILE)
            && !names.contains(&"renamed.bin")
            && !names.contains(&"notes.txt"),
        "{list}"
    );
    // The moved file is in `reports`, with its bytes.
    let reports = list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "reports")
        .and_then(|o| o["id"].as_str())
        .expect("the reports folder");
    let inside: Value = hub
        .req(
            reqwest::Method::GET,
            &hub.acc(&format!("/storage/folders/{reports}/contents")),
        )
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let moved = inside["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "notes.txt")
        .unwrap_or_else(|| panic!("notes.txt is not in reports: {inside}"));
    assert_eq!(moved["parent"]["name"], "reports", "{moved}");
    assert_eq!(moved["size"], 5, "{moved}");
}

/// Signs in over HTTP; the session cookie (`name=value`).
async fn http_sign_in(hub: &TestHub) -> String {
    let r = client()
        .post(hub.url("/ui/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("token", hub.creds.meta_token.as_str())]).expect("form"),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str().expect("cookie");
    set.split(';').next().expect("pair").to_owned()
}

/// A page of the portal and the CSRF token its forms carry.
async fn page_and_csrf(hub: &TestHub, cookie: &str, path: &str) -> (String, String) {
    let html = client()
        .get(hub.url(path))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token")
        .to_owned();
    (html, csrf)
}

async fn post_form(
    hub: &TestHub,
    cookie: &str,
    path: &str,
    pairs: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(hub.url(path))
        .header("Cookie", cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(pairs).expect("form"))
        .send()
        .await
        .expect("post")
}

/// Webhooks and accounts in the portal: adding a webhook runs its live test (a receiver that
/// answers wrong is refused with the reason, nothing added); a good one shows its secret once;
/// a change to the account is delivered and shows in the delivery log, from which it is sent
/// again; an account is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_adds_webhooks_shows_deliveries_resends_and_disconnects() {
    use e2e::webhook_receiver::{Answer, Receiver};
    let hub = TestHub::start_with(e2e::HubOptions {
        yaml: Some(crate::webhooks::FAST.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let (app, acc) = (hub.creds.application_id, hub.creds.account_id);
    let cookie = http_sign_in(&hub).await;
    let (_, csrf) = page_and_csrf(&hub, &cookie, &format!("/ui/apps/{app}")).await;
    let rx = Receiver::start(app).await;

    rx.answer(Answer::Status(200, "not-the-app-id".into(), None));
    let r = post_form(
        &hub,
        &cookie,
        &format!("/ui/apps/{app}/webhooks"),
        &[("url", &rx.url()), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 400);
    let html = r.text().await.expect("html");
    assert!(html.contains("role=\"alert\""), "{html}");
    assert!(hub
        .state
        .db
        .list_webhooks(app)
        .await
        .expect("hooks")
        .is_empty());

    rx.answer(Answer::Echo);
    let r = post_form(
        &hub,
        &cookie,
        &format!("/ui/apps/{app}/webhooks"),
        &[("url", &rx.url()), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.expect("html");
    assert!(html.contains("id=\"new-secret\">whsec_"), "{html}");
    let hook = hub.state.db.list_webhooks(app).await.expect("hooks")[0].id;
    // The secret is not on the page reached again.
    let (again, _) = page_and_csrf(&hub, &cookie, &format!("/ui/apps/{app}")).await;
    assert!(!again.contains("whsec_"), "{again}");

    // A change to the account is delivered and logged.
    let before = rx.count();
    hub.upload(acc, "root", "notify.txt", b"hello".to_vec())
        .await
        .expect("upload");
    assert!(
        rx.wait_for(std::time::Duration::from_secs(10), |g| g.len() > before)
            .await
    );
    let log_path = format!("/ui/apps/{app}/webhooks/{hook}");
    let mut delivery = None;
    for _ in 0..50 {
        let (log, _) = page_and_csrf(&hub, &cookie, &log_path).await;
        delivery = log
            .split("/deliveries/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .map(str::to_owned);
        if delivery.is_some() && log.contains("data-ok=\"true\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delivery = delivery.expect("a delivery in the log");
    let n = rx.count();
    let r = post_form(
        &hub,
        &cookie,
        &format!("{log_path}/deliveries/{delivery}/resend"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(
        rx.wait_for(std::time::Duration::from_secs(10), |g| g.len() > n)
            .await,
        "resent"
    );

    // Disconnect the account: the API no longer knows it.
    let r = post_form(
        &hub,
        &cookie,
        &format!("/ui/apps/{app}/accounts/{acc}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = hub
        .req(reqwest::Method::GET, &hub.acc(""))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    // And a forged delete of the webhook is refused.
    let r = post_form(
        &hub,
        &cookie,
        &format!("/ui/apps/{app}/webhooks/{hook}/delete"),
        &[("csrf", "x")],
    )
    .await;
    assert_eq!(r.status(), 403);
}
