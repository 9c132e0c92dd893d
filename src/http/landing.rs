//! `GET /`: a small page telling a person what this cache is and how to use it.

use std::fmt::Write;

use crate::http::request::Headers;

/// What the page shows.
pub struct Facts<'a> {
    /// The `Host` header (or a trusted proxy's `X-Forwarded-Host`), to write ready-to-paste
    /// configuration.
    pub host: Option<&'a str>,
    /// `http`, or `https` when a trusted proxy says so with `X-Forwarded-Proto`.
    pub scheme: &'a str,
    pub cache_info: &'a str,
    pub paths: usize,
    pub nar_bytes: u64,
    pub public_keys: &'a [String],
    pub uploads: bool,
}

/// The HTML page; every value from outside is escaped.
pub fn render(f: &Facts) -> String {
    let base = match f.host {
        Some(h) if !h.is_empty() => format!("{}://{h}", f.scheme),
        _ => format!("{}://THIS-HOST:PORT", f.scheme),
    };
    let mut conf = format!("substituters = {base} https://cache.nixos.org\n");
    if !f.public_keys.is_empty() {
        let _ = writeln!(
            conf,
            "trusted-public-keys = {} cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            f.public_keys.join(" ")
        );
    }
    let keys = if f.public_keys.is_empty() {
        "<p id=\"unsigned\" style=\"border-left:4px solid #c60;padding-left:.8em\"><strong>Unsigned:</strong> \
this server adds no signatures of its own; narinfos carry only the signatures they were uploaded \
with. Nix clients check signatures by default (<code>require-sigs = true</code>) and ignore \
paths not signed by a key in their <code>trusted-public-keys</code>, so they cannot use this \
cache unless its paths were signed by a key they trust. The operator can start the server with \
<code>--sign-key</code>.</p>".to_string()
    } else {
        let items: String = f
            .public_keys
            .iter()
            .map(|k| format!("<li><code>{}</code></li>", escape(k)))
            .collect();
        format!("<p>Every narinfo is signed with:</p><ul id=\"keys\">{items}</ul>")
    };
    let push = if f.uploads {
        format!(
            "<h2>Pushing</h2><pre>nix copy --to '{}' ./result</pre><p>with the upload token as the password in your <code>netrc-file</code>.</p>",
            escape(&base)
        )
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Nix binary cache</title>\
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto;padding:0 1em;color:#222}}\
pre{{background:#f4f4f4;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere}}td{{padding:.2em 1em .2em 0}}</style></head>\
<body><h1>Nix binary cache</h1>\
<p>This server holds prebuilt Nix store paths. Point Nix at it as a substituter.</p>\
<table><tr><td>Store paths</td><td id=\"paths\">{paths}</td></tr>\
<tr><td>Total size (compressed NARs)</td><td id=\"size\">{size}</td></tr></table>\
<h2>Using it</h2><p>Add to <code>/etc/nix/nix.conf</code>:</p><pre id=\"conf\">{conf}</pre>{keys}{push}\
<h2>nix-cache-info</h2><pre>{info}</pre>\
<p><small>Served by nix-binary-cache {version}.</small></p></body></html>\n",
        paths = f.paths,
        size = human_bytes(f.nar_bytes),
        conf = escape(&conf),
        info = escape(f.cache_info),
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// Where clients reach this server: `(scheme, host)`. The `Host` header and plain `http`,
/// unless `trust_proxy` (the operator's `--trust-proxy-headers`: a proxy in front sets these
/// and strips clients' own) lets `X-Forwarded-Proto` and `X-Forwarded-Host` say otherwise.
/// Values that are not a plain scheme or host name are ignored.
pub fn origin<'a>(headers: &Headers<'a>, trust_proxy: bool) -> (&'static str, Option<&'a str>) {
    // A proxy chain appends: the first value is the one the client's proxy saw.
    let first = |v: Option<&'a str>| v.and_then(|v| v.split(',').next()).map(str::trim);
    let host = headers.host;
    if !trust_proxy {
        return ("http", host);
    }
    let scheme = match first(headers.x_forwarded_proto) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let is_host = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
    };
    (
        scheme,
        first(headers.x_forwarded_host).filter(is_host).or(host),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_facts_and_escapes_the_host() {
        let keys = vec!["test-cache-1:abc=".to_string()];
        let page = render(&Facts {
            host: Some("cache.example:8080<script>"),
            scheme: "http",
            cache_info: "StoreDir: /nix/store\n",
            paths: 3,
            nar_bytes: 1536,
            public_keys: &keys,
            uploads: true,
        });
        assert!(page.contains("<td id=\"paths\">3</td>"));
        assert!(page.contains("1.5 KiB"));
        assert!(page.contains("test-cache-1:abc="));
        assert!(page.contains("substituters = http://cache.example:8080&lt;script&gt;"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("nix copy --to"));
        assert_eq!(human_bytes(10), "10 B");
        assert!(!page.contains("id=\"unsigned\""));
    }

    #[test]
    fn an_unsigned_cache_is_flagged() {
        let page = render(&Facts {
            host: None,
            scheme: "https",
            cache_info: "",
            paths: 0,
            nar_bytes: 0,
            public_keys: &[],
            uploads: false,
        });
        assert!(page.contains("id=\"unsigned\"") && page.contains("require-sigs"));
        assert!(page.contains("substituters = https://THIS-HOST:PORT"));
    }

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_proxy() {
        let headers = Headers {
            host: Some("10.0.0.5:8080"),
            x_forwarded_proto: Some("https"),
            x_forwarded_host: Some("cache.example.org, 10.0.0.1"),
            ..Headers::default()
        };
        assert_eq!(origin(&headers, false), ("http", Some("10.0.0.5:8080")));
        assert_eq!(origin(&headers, true), ("https", Some("cache.example.org")));
        let odd = Headers {
            host: Some("a"),
            x_forwarded_proto: Some("gopher"),
            x_forwarded_host: Some("evil\"host"),
            ..Headers::default()
        };
        assert_eq!(origin(&odd, true), ("http", Some("a")));
    }
}
