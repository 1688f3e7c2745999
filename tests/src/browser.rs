//! A real headless Chromium for end-to-end tests, driven by `tests/browser/run.mjs`
//! (Playwright, from `playwright-core` on npm, plus axe-core accessibility checks).
//!
//! A test hands [`run`] a JSON object `{ "screenshots": DIR, "steps": [...] }` (the step
//! schema is documented at the top of `tests/browser/run.mjs`) and gets back the driver's
//! single JSON result: `ok`, `failed_step`, `error`, `url`, `status`, `texts`, `evals`, `axe`,
//! `dialogs`, `console_errors`, `csp_violations`, `page_errors`, `navigations`,
//! `screenshots`. A failed step is part of that result (`ok: false`), not an error of
//! [`run`]; [`ensure_ok`] turns it into one.
//!
//! The browser is the Debian `chromium` package (`SWITCHYARD_CHROMIUM` overrides the path);
//! `.ci/install-deps.sh` installs it, node and `tests/browser/node_modules`; [`available`]
//! tells whether they are all there.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// How long one driver run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of the driver's stderr/stdout an error quotes.
const TAIL_BYTES: usize = 4096;

/// `<repo>/tests/browser`.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The driver script, `<repo>/tests/browser/run.mjs`.
pub fn driver() -> PathBuf {
    browser_dir().join("run.mjs")
}

/// The Chromium binary the driver launches: `$SWITCHYARD_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("SWITCHYARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether a browser test can run here: node, Chromium and the driver's npm packages
/// (`npm ci --prefix tests/browser`) are present.
pub fn available() -> bool {
    crate::servers::which("node").is_some()
        && chromium().is_file()
        && browser_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file()
        && browser_dir()
            .join("node_modules/axe-core/axe.min.js")
            .is_file()
}

/// Runs the driver on `steps` (`{ "screenshots": DIR, "steps": [...] }`) and returns its JSON
/// result. Errors when the driver cannot run (node or Chromium missing, a crash, more than
/// 120 s) or prints something else than one JSON object; the error quotes its output's tail.
pub async fn run(steps: serde_json::Value) -> Result<serde_json::Value> {
    let node = crate::servers::which("node").context("node is not installed (Debian `nodejs`)")?;
    let mut file = tempfile::Builder::new()
        .prefix("browser-steps-")
        .suffix(".json")
        .tempfile()
        .context("creating the steps file")?;
    serde_json::to_writer(&mut file, &steps).context("writing the steps file")?;
    std::io::Write::flush(&mut file).context("writing the steps file")?;

    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(driver())
        .arg(file.path())
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting node tests/browser/run.mjs")?;
    // On timeout the future (and with it the child) is dropped: kill_on_drop kills node, and
    // Chromium exits when its pipe to node closes.
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "tests/browser/run.mjs did not finish within {} s",
                RUN_TIMEOUT.as_secs()
            )
        })?
        .context("waiting for node tests/browser/run.mjs")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "tests/browser/run.mjs failed ({}){}{}",
            output.status,
            section("stderr", &stderr),
            section("stdout", &stdout)
        );
    }
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let value = line
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object);
    match value {
        Some(v) => Ok(v),
        None => bail!(
            "tests/browser/run.mjs printed no JSON result{}{}",
            section("stdout", &stdout),
            section("stderr", &stderr)
        ),
    }
}

/// An error naming the failed step and its message when the driver's `result` is not `ok`.
pub fn ensure_ok(result: &serde_json::Value) -> Result<()> {
    if result["ok"].as_bool() == Some(true) {
        return Ok(());
    }
    bail!(
        "browser step {} failed at {}: {}",
        result["failed_step"],
        result["url"],
        result["error"].as_str().unwrap_or("(no error message)")
    )
}

/// `\n--- NAME (tail) ---\nTEXT` with at most the last TAIL_BYTES of `text`.
fn section(name: &str, text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        return format!("\n({name} is empty)");
    }
    let mut start = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("\n--- {name} (tail) ---\n{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Form, Query};
    use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::collections::HashMap;

    const CSP: &str = "default-src 'none'; script-src 'self'; form-action 'self'";

    fn page(body: &str) -> axum::response::Response {
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><title>Test</title></head>\
             <body><main><h1>Test</h1>{body}</main></body></html>"
        );
        (
            [
                (CONTENT_SECURITY_POLICY, CSP),
                (CONTENT_TYPE, "text/html; charset=utf-8"),
            ],
            html,
        )
            .into_response()
    }

    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }

    /// A loopback site under a strict CSP: a form posting to `/submit` (303 to `/done`), a
    /// page raising dialogs from a same-origin script, one with an inline script (blocked) and
    /// one with accessibility violations.
    async fn site() -> Result<(String, tokio::task::JoinHandle<()>)> {
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|| async {
                    page(
                        "<form id=\"f\" method=\"post\" action=\"/submit\">\
                         <label for=\"n\">Name</label><input id=\"n\" name=\"name\">\
                         <button id=\"go\" type=\"submit\">Go</button></form>\
                         <button id=\"noop\" type=\"button\">Nothing</button>",
                    )
                }),
            )
            .route(
                "/submit",
                axum::routing::post(|Form(f): Form<HashMap<String, String>>| async move {
                    let name = f.get("name").cloned().unwrap_or_default();
                    let q = percent_encoding::utf8_percent_encode(
                        &name,
                        percent_encoding::NON_ALPHANUMERIC,
                    );
                    (StatusCode::SEE_OTHER, [(LOCATION, format!("/done?name={q}"))])
                }),
            )
            .route(
                "/done",
                axum::routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                    let name = q.get("name").cloned().unwrap_or_default();
                    page(&format!("<p id=\"who\">{}</p>", escape(&name)))
                }),
            )
            .route(
                "/dialog",
                axum::routing::get(|| async { page("<script src=\"/alert.js\"></script>") }),
            )
            .route(
                "/alert.js",
                axum::routing::get(|| async {
                    ([(CONTENT_TYPE, "text/javascript")], "alert('hi');")
                }),
            )
            .route(
                "/inline",
                axum::routing::get(|| async { page("<script>alert('inline')</script>") }),
            )
            .route(
                "/a11y",
                axum::routing::get(|| async {
                    (
                        [
                            (CONTENT_SECURITY_POLICY, CSP),
                            (CONTENT_TYPE, "text/html; charset=utf-8"),
                        ],
                        "<!doctype html><html><body><input name=\"q\"><a href=\"/\"></a></body></html>",
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((base, task))
    }

    #[tokio::test]
    async fn drives_a_form_under_a_strict_csp() -> Result<()> {
        assert!(
            available(),
            "node, {} and tests/browser/node_modules are needed: run .ci/install-deps.sh",
            chromium().display()
        );
        let (base, server) = site().await?;
        let shots = tempfile::tempdir()?;
        let xss = "<img src=x onerror=alert(1)>";
        let r = run(serde_json::json!({
            "screenshots": shots.path(),
            "steps": [
                { "goto": format!("{base}/") },
                { "axe": "form" },
                { "click": "#noop" },
                { "fill": { "#n": xss } },
                { "submit": "#f" },
                { "wait_url_prefix": format!("{base}/done"), "timeout_ms": 5000 },
                { "text": "#who" },
                { "eval": "document.title" },
                { "screenshot": "done" },
                { "expect_no_dialog": true },
                { "goto": format!("{base}/inline") },
                { "goto": format!("{base}/a11y") },
                { "axe": "bad" },
                { "goto": format!("{base}/dialog") },
            ]
        }))
        .await?;
        ensure_ok(&r)?;
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["texts"]["#who"], xss, "{r}");
        assert_eq!(r["evals"], serde_json::json!(["Test"]), "{r}");
        assert_eq!(r["axe"]["form"], serde_json::json!([]), "{r}");
        let bad: Vec<&str> = r["axe"]["bad"]
            .as_array()
            .context("axe.bad")?
            .iter()
            .filter_map(|v| v["id"].as_str())
            .collect();
        assert!(bad.contains(&"label") && bad.contains(&"link-name"), "{r}");
        assert!(shots.path().join("done.png").is_file());
        // The inline script was blocked (a CSP violation, no dialog); the same-origin one ran.
        assert_eq!(r["dialogs"].as_array().map(Vec::len), Some(1), "{r}");
        assert_eq!(r["dialogs"][0]["message"], "hi", "{r}");
        let csp = r["csp_violations"].as_array().context("csp_violations")?;
        assert!(csp.iter().any(|v| v["blocked"] == "inline"), "{r}");
        let navs = r["navigations"].as_array().context("navigations")?;
        assert!(navs.iter().any(|n| n["status"] == 303), "{r}");

        // A failing step is reported, not an error of `run`.
        let r = run(serde_json::json!({
            "steps": [
                { "goto": format!("{base}/dialog") },
                { "expect_no_dialog": true },
                { "text": "#never" },
            ]
        }))
        .await?;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["failed_step"], 1, "{r}");
        assert!(ensure_ok(&r).is_err());
        server.abort();
        Ok(())
    }
}
