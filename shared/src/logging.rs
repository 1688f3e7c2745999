//! The log subscriber every binary installs: the operator's filter, capped for dependencies
//! that print credentials, colours only on a terminal, and one line per event.
//!
//! Capped targets (never above INFO, whatever the filter says):
//! - `reqsign*` (OpenDAL's request signers): at DEBUG `reqsign_core` prints each credential
//!   provider with `{:?}`, which for static credentials is the access key and the secret key,
//!   and the signers print canonical requests and strings to sign.
//! - `opendal_service_*` (one crate per OpenDAL service): at DEBUG they print each builder's
//!   `Debug`, the account's settings; whether a builder redacts its secrets is up to each
//!   service crate, so none of them gets to DEBUG.
//!
//! Multi-line events (an error's `Debug` with its backtrace, a provider body) are flattened
//! into one line by the writer, and backtrace frames are dropped, so a log file stays one
//! event per line for whatever reads it.

use std::io::{IsTerminal, Write};
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Dependencies whose DEBUG/TRACE events carry secrets or provider bodies, and the most they
/// may log. Targets match by prefix, so these cover every `reqsign_*` crate (at DEBUG,
/// `reqsign_core` prints static credentials with `{:?}`) and every `opendal_service_*` crate
/// (each prints its builder's settings), including ones added later.
const CAPPED: &[(&str, LevelFilter)] = &[
    ("reqsign", LevelFilter::INFO),
    ("opendal_service_", LevelFilter::INFO),
];

/// The filter cap: everything as the operator's filter says, except [`CAPPED`].
pub fn caps() -> Targets {
    CAPPED.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, (target, level)| t.with_target(*target, *level),
    )
}

/// Installs the global subscriber: `spec` is an `EnvFilter` directive string (falls back to
/// `info` when it does not parse), `json` selects JSON lines. Returns false when a subscriber
/// was already installed.
pub fn init(spec: &str, json: bool) -> bool {
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = !json && std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(OneLine)
        .with_ansi(ansi);
    let layer = if json {
        fmt.json().with_filter(filter.and(caps())).boxed()
    } else {
        fmt.with_filter(filter.and(caps())).boxed()
    };
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_ok()
}

/// Makes [`OneLineWriter`]s on stderr.
#[derive(Debug, Clone, Copy)]
pub struct OneLine;

impl<'a> MakeWriter<'a> for OneLine {
    type Writer = OneLineWriter<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter(std::io::stderr())
    }
}

/// Writes each formatted event (the subscriber writes one event per `write`) as one line.
#[derive(Debug)]
pub struct OneLineWriter<W: Write>(pub W);

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut line = one_line(&text);
        line.push('\n');
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `text` as one line: interior line breaks become ` | `, backtrace frames are dropped (a
/// marker says so), trailing whitespace goes.
pub fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut in_backtrace = false;
    for raw in text.split(['\n', '\r']) {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        if t.eq_ignore_ascii_case("backtrace:") || t.starts_with("stack backtrace:") {
            in_backtrace = true;
            parts.push("[backtrace omitted]");
            continue;
        }
        if in_backtrace && is_frame(t) {
            continue;
        }
        in_backtrace = false;
        parts.push(raw.trim_end());
    }
    parts.join(" | ")
}

/// A backtrace line: `12: crate::module::function` or `at /path/file.rs:10:5`.
fn is_frame(t: &str) -> bool {
    if t.starts_with("at ") {
        return true;
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && t[digits..].starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_one_line_without_backtraces() {
        let event = "2026-01-01T00:00:00Z  WARN opendal::layers::retry: will retry because: \
                     Unexpected (temporary) at read => send http request\n\nContext:\n   \
                     url: http://x/\n\nBacktrace:\n   0: std::backtrace::Backtrace::create\n     \
                     at /rustc/x/library/std/src/backtrace.rs:331:13\n   1: opendal::Error::new\n\n";
        let line = one_line(event);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("[backtrace omitted]"), "{line}");
        assert!(!line.contains("backtrace.rs"), "{line}");
        assert!(line.contains("url: http://x/"), "{line}");
        assert_eq!(one_line("plain event\n"), "plain event");
    }

    #[test]
    fn credential_printing_targets_are_capped() {
        let caps = caps();
        assert!(caps.would_enable("reqsign_core::api", &tracing::Level::INFO));
        assert!(!caps.would_enable("reqsign_core::api", &tracing::Level::DEBUG));
        assert!(!caps.would_enable("reqsign_aws_v4::sign_request", &tracing::Level::DEBUG));
        assert!(!caps.would_enable("opendal_service_s3::backend", &tracing::Level::DEBUG));
        assert!(caps.would_enable("hub::api", &tracing::Level::TRACE));
    }
}
