//! The sidecar's HTTP/1.1 client against an application that answers arbitrary bytes
//! (heads, content-length and chunked bodies, trailers, 1xx answers) and then closes:
//! every answer is read whole or refused, never hangs and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((status, _)) = causeway_dataplane::fuzzing::http1_exchange(data) {
        assert!((100..=999).contains(&status));
    }
});
