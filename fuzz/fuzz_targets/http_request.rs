//! The connection engine's request parsing and body framing (crates/tiny_http): any bytes must
//! be refused, fail, or give a body of exactly the declared length; never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tiny_http::fuzzing::request(data);
});
