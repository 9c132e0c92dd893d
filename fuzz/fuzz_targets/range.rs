//! Fuzzes the `Range` header parser: the first 8 bytes are the body length, the rest the header.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_binary_cache::http::range::{RangeAnswer, parse};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (total, header) = data.split_at(8);
    let total = u64::from_le_bytes(total.try_into().unwrap());
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match parse(header, total) {
        RangeAnswer::Partial { start, len } => {
            assert!(len >= 1, "{header:?} of {total}: empty range");
            let end = start.checked_add(len);
            assert!(
                end.is_some_and(|end| end <= total),
                "{header:?} of {total}: {start}+{len} runs past the end"
            );
        }
        RangeAnswer::Full => {}
        RangeAnswer::Unsatisfiable => {
            // Only a range that cannot be met (or an empty body) is refused.
            assert!(
                header.contains("bytes="),
                "{header:?}: 416 without a byte range"
            );
        }
    }
});
