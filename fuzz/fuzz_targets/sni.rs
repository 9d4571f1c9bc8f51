//! The ingress reading a ClientHello's SNI from an unauthenticated peer, the bytes
//! arriving in pieces of any size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = causeway_ingress::fuzzing::sni(data);
});
