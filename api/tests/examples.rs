//! Every file in `examples/` at the workspace root parses and validates, and every
//! resource type has an example, so the docs never show an invalid or missing one.

use std::collections::BTreeSet;
use std::path::PathBuf;

use causeway_api::{Resource, types, validate};

#[test]
fn every_example_is_valid_and_every_type_has_one() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut kinds = BTreeSet::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let resources = Resource::from_yaml_documents(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!resources.is_empty(), "{}: no resource", file.display());
        for r in resources {
            if let Err(e) = validate(&r) {
                panic!("{}: {}: {e}", file.display(), r.key());
            }
            // The JSON form is the same resource.
            let again =
                Resource::from_json(r.to_json().as_bytes()).expect("JSON of a parsed resource");
            assert_eq!(again, r, "{}", file.display());
            kinds.insert(r.kind);
        }
    }
    let all: BTreeSet<String> = types().iter().map(|t| t.kind.to_owned()).collect();
    let missing: Vec<&String> = all.difference(&kinds).collect();
    assert!(
        missing.is_empty(),
        "no example in examples/ for: {missing:?}"
    );
}
