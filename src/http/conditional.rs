//! Conditional and partial GETs: `If-None-Match`, `If-Modified-Since`, `Range` and `If-Range`
//! (RFC 9110, 13 and 14), applied to a 200 response.

use crate::http::range::{self, RangeAnswer};
use crate::http::request::Headers;
use crate::http::response::{Body, Response};
use crate::http::service::max_age;

/// Applies `If-None-Match`, `If-Modified-Since`, `Range` and `If-Range` to a 200 response.
pub(crate) fn conditional(response: Response, headers: &Headers<'_>) -> Response {
    if response.status != 200 {
        return response;
    }
    let etag = response.get_header("ETag");
    let last_modified = response.get_header("Last-Modified");

    let not_modified = match (headers.if_none_match, headers.if_modified_since) {
        (Some(inm), _) => etag.is_some_and(|tag| etag_matches(inm, tag)),
        (None, Some(ims)) => last_modified.is_some_and(|lm| not_newer(lm, ims)),
        (None, None) => false,
    };
    if not_modified {
        let mut r = Response::new(304, Body::Empty);
        r.headers = response
            .headers
            .into_iter()
            .filter(|(n, _)| matches!(*n, "ETag" | "Last-Modified" | "Cache-Control"))
            .collect();
        return r;
    }

    let total = response.body.len();
    let range_applies = match headers.if_range {
        Some(cond) => Some(cond) == etag || Some(cond) == last_modified,
        None => true,
    };
    let answer = match headers.range {
        Some(spec) if range_applies => range::parse(spec, total),
        _ => RangeAnswer::Full,
    };
    match answer {
        RangeAnswer::Full => response.header("Accept-Ranges", "bytes"),
        RangeAnswer::Partial { start, len } => {
            let Response { headers, body, .. } = response;
            let mut r = Response {
                status: 206,
                headers,
                body: body.slice(start, len),
            };
            r.headers.push((
                "Content-Range",
                format!("bytes {start}-{}/{total}", start + len - 1).into(),
            ));
            r.header("Accept-Ranges", "bytes")
        }
        RangeAnswer::Unsatisfiable => Response::new(416, Body::Empty)
            .header("Content-Range", format!("bytes */{total}"))
            .header("Cache-Control", max_age::NONE),
    }
}

/// `If-None-Match`: `*` or a list of tags; weak comparison, as RFC 9110 asks for GET.
fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|t| bare(t) == bare(etag))
}

/// True if the resource (modified at `last_modified`) is not newer than `since`.
fn not_newer(last_modified: &str, since: &str) -> bool {
    match (
        httpdate::parse_http_date(last_modified),
        httpdate::parse_http_date(since),
    ) {
        (Ok(lm), Ok(since)) => lm <= since,
        _ => false,
    }
}
