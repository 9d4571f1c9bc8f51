//! Resource documents as the APIs and `causeway apply` read them (JSON and multi-document
//! YAML), then validation and the write-time warnings. A document that validates must
//! survive a round trip through JSON and validate again.
#![no_main]

use causeway_api::Resource;
use libfuzzer_sys::fuzz_target;

fn exercise(r: &Resource) {
    if causeway_api::validate(r).is_err() {
        return;
    }
    let _ = causeway_api::warnings(r);
    let json = serde_json::to_vec(r).expect("a resource serializes");
    let back = Resource::from_json(&json).expect("a valid resource's JSON parses");
    assert!(
        causeway_api::validate(&back).is_ok(),
        "a valid resource is valid after a round trip"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Resource::from_json(data) {
        exercise(&r);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(docs) = Resource::from_yaml_documents(text)
    {
        for r in &docs {
            exercise(r);
        }
    }
});
