//! The sidecar's DNS server taking a query from the workload it serves (any bytes, as a
//! compromised or buggy application may send).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway_dataplane::fuzzing::dns_query(data);
});
