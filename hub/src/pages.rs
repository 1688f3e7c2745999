//! The HTML pages the hub serves itself (the OAuth connect pages, sharing links' pages):
//! escaping, the page shell, the security headers every page carries, and the embedded
//! stylesheet (`/ui/assets/style.css`). Pages load nothing from elsewhere and run no inline
//! script: the Content-Security-Policy forbids both.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// The stylesheet of every page (no build step: the file is the asset).
const STYLE: &str = include_str!("../assets/style.css");
/// The pages' icon.
const ICON: &str = include_str!("../assets/icon.svg");
/// The operator console's script (plain JavaScript, no build step).
const CONSOLE: &str = include_str!("../assets/console.js");
/// The portal's file explorer (plain JavaScript on the public REST API).
const EXPLORER: &str = include_str!("../assets/explorer.js");

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A 404 page: no such `what`.
pub fn not_found(what: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("<h1>No such {}</h1>", escape(what)),
        &[],
    )
}

/// A whole page: `title` (text) and `body` (HTML the caller escaped).
pub fn page(status: StatusCode, title: &str, body: &str, form_targets: &[String]) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title>\
         <link rel=\"icon\" href=\"/ui/assets/icon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head>\n\
         <body>\n<main>\n{body}\n</main>\n</body></html>\n",
        escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    secure(&mut r, form_targets);
    r
}

/// A page that runs the embedded script `script` (`/ui/assets/<script>`) and fetches from
/// this origin; otherwise as [`page`].
pub fn scripted_page(title: &str, body: &str, script: &str) -> Response {
    let body = format!(
        "{body}\n<script src=\"/ui/assets/{}\" defer></script>",
        escape(script)
    );
    let mut r = page(StatusCode::OK, title, &body, &[]);
    let csp = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
               img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    r
}

/// The security headers of a page. `form_targets` are the origins a form on it may end up at
/// besides this one (a redirect after the submission counts as the form's target).
pub fn secure(r: &mut Response, form_targets: &[String]) {
    let mut form_action = String::from("'self'");
    for t in form_targets {
        // Origins only (scheme://host[:port]): nothing that could end the directive.
        if t.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            form_action.push(' ');
            form_action.push_str(t);
        }
    }
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /ui/assets/{name}`: the embedded assets.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        "console.js" => (CONSOLE, "text/javascript; charset=utf-8"),
        "explorer.js" => (EXPLORER, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<img src=x onerror=alert(1)>\"'&"),
            "&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"
        );
    }

    #[test]
    fn form_targets_cannot_extend_the_policy() {
        let mut r = Response::new(axum::body::Body::empty());
        secure(
            &mut r,
            &[
                "https://app.example".into(),
                "https://x; script-src *".into(),
            ],
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            csp.contains("form-action 'self' https://app.example;"),
            "{csp}"
        );
        assert!(!csp.contains("script-src"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
