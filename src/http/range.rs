//! The `Range` request header, single byte ranges only (all Nix and curl ever send).

/// What to send for a body of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: send the whole body with 200.
    Full,
    /// Send bytes `start..start + len` with 206.
    Partial { start: u64, len: u64 },
    /// The range starts past the end: 416 with `Content-Range: bytes */<len>`.
    Unsatisfiable,
}

/// Interprets a `Range` header value against a body of `total` bytes.
///
/// Forms: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Syntax we do not understand, and several ranges,
/// are ignored (RFC 9110 lets a server answer those with the full body).
pub fn parse(header: &str, total: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || total == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                let len = n.min(total);
                RangeAnswer::Partial {
                    start: total - len,
                    len,
                }
            }
        }
        // bytes=a-
        (Some(a), None) if last.is_empty() => from_to(a, total.saturating_sub(1), total),
        // bytes=a-b
        (Some(a), Some(b)) if a <= b => from_to(a, b, total),
        _ => RangeAnswer::Full,
    }
}

fn from_to(first: u64, last: u64, total: u64) -> RangeAnswer {
    if first >= total {
        return RangeAnswer::Unsatisfiable;
    }
    let last = last.min(total - 1);
    RangeAnswer::Partial {
        start: first,
        len: last - first + 1,
    }
}

/// A plain decimal number (no sign, no spaces); `None` for anything else or for overflow.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::RangeAnswer::*;
    use super::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(parse("bytes=0-9", 100), Partial { start: 0, len: 10 });
        assert_eq!(parse("bytes=90-", 100), Partial { start: 90, len: 10 });
        assert_eq!(parse("bytes=-10", 100), Partial { start: 90, len: 10 });
        assert_eq!(parse("bytes=-1000", 100), Partial { start: 0, len: 100 });
        assert_eq!(parse("bytes=95-1000", 100), Partial { start: 95, len: 5 });
        assert_eq!(parse("bytes=99-99", 100), Partial { start: 99, len: 1 });
    }

    #[test]
    fn out_of_range_is_unsatisfiable() {
        assert_eq!(parse("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn junk_and_multiple_ranges_mean_full_body() {
        for h in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=99999999999999999999999-",
            "bytes=1--2",
        ] {
            assert_eq!(parse(h, 100), Full, "{h}");
        }
    }
}
