//! The store on a real RocksDB in a temp dir: log bounds, compaction, reopen, snapshots.

use protobuf::Message as _;
use raft::Storage as _;

use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("e{index}").into_bytes().into(),
        ..Default::default()
    }
}

#[test]
fn log_survives_reopen_and_overwrites_conflicting_suffix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        assert!(s.is_empty());
        s.bootstrap(vec![1, 2, 3]).unwrap();
        // As if a snapshot at 1 held the membership: the log starts at 2, so a node
        // that joins with an empty log is sent a snapshot (with the membership).
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(s.applied_index().unwrap(), 1);
        let ents: Vec<Entry> = (2..=10).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            vote: 2,
            ..Default::default()
        };
        s.append(&ents, Some(&hs)).unwrap();
        // A new leader overwrites 8..10 with a shorter suffix of term 2.
        s.append(&[entry(8, 2)], None).unwrap();
        assert_eq!(s.last_index().unwrap(), 8);
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(!s.is_empty());
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state.vote, 2);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(
        s.last_index().unwrap(),
        8,
        "the overwritten tail is gone after reopen"
    );
    assert_eq!(s.term(8).unwrap(), 2);
    let got = s
        .entries(3, 9, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7, 8]
    );
    // max_size still returns at least one entry.
    assert_eq!(
        s.entries(3, 9, Some(1), GetEntriesContext::empty(false))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn compaction_keeps_the_term_of_the_last_compacted_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let ents: Vec<Entry> = (1..=20)
        .map(|i| entry(i, if i < 10 { 1 } else { 3 }))
        .collect();
    s.append(&ents, None).unwrap();
    s.compact(12).unwrap();
    assert_eq!(s.first_index().unwrap(), 13);
    assert_eq!(s.term(12).unwrap(), 3);
    assert!(matches!(
        s.term(5),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert!(matches!(
        s.entries(10, 15, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (13, 20)
    );
}

fn mesh(name: &str, labels: &[(&str, &str)]) -> Resource {
    let mut r =
        Resource::from_json(format!(r#"{{"type":"Mesh","name":"{name}"}}"#).as_bytes()).unwrap();
    for (k, v) in labels {
        r.labels.insert(k.to_string(), v.to_string());
    }
    r
}

fn put(b: &mut ApplyBatch<'_>, index: u64, r: Resource) {
    let cmd = Command::Put {
        resource: Box::new(r),
        expected_version: None,
    };
    b.apply(index, time::OffsetDateTime::UNIX_EPOCH, cmd)
        .unwrap()
        .unwrap();
}

#[test]
fn label_index_follows_updates_and_lists_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
        .unwrap();
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("a", &[("team", "x")]));
    put(&mut b, 2, mesh("b", &[("team", "y")]));
    put(&mut b, 3, mesh("c", &[("team", "x")]));
    // Same batch: relabel a; the index must drop the old label.
    put(&mut b, 4, mesh("a", &[("team", "y")]));
    b.commit().unwrap();
    assert_eq!(s.applied_index().unwrap(), 4);
    let names = |sel: &[(String, Option<String>)]| -> Vec<String> {
        s.list("Mesh", "", sel, None, 100)
            .unwrap()
            .items
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    assert_eq!(names(&[("team".into(), Some("x".into()))]), vec!["c"]);
    assert_eq!(names(&[("team".into(), Some("y".into()))]), vec!["a", "b"]);
    assert_eq!(names(&[("team".into(), None)]), vec!["a", "b", "c"]);
    let p1 = s.list("Mesh", "", &[], None, 2).unwrap();
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p1.next.as_deref(), Some("b"));
    let p2 = s.list("Mesh", "", &[], p1.next.as_deref(), 2).unwrap();
    assert_eq!(
        p2.items.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
    assert_eq!(p2.next, None);
    let a = s.get(&mesh("a", &[]).key()).unwrap().unwrap();
    assert_eq!(a.version, Some(4), "version is the index of the last write");
}

#[test]
fn snapshot_round_trips_into_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.bootstrap(vec![1]).unwrap();
    s.append(&(2..=4).map(|i| entry(i, 2)).collect::<Vec<_>>(), None)
        .unwrap();
    let mut b = s.apply_batch();
    put(&mut b, 2, mesh("a", &[("k", "v")]));
    put(&mut b, 3, mesh("b", &[]));
    b.apply(
        4,
        time::OffsetDateTime::UNIX_EPOCH,
        Command::RegisterMember(Member {
            id: 1,
            raft_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
        }),
    )
    .unwrap()
    .unwrap();
    b.commit().unwrap();
    let snap = s.snapshot(4, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 4);
    assert_eq!(snap.get_metadata().term, 2);
    let bytes = snap.write_to_bytes().unwrap();

    let dir2 = tempfile::tempdir().unwrap();
    let t = Store::open(dir2.path()).unwrap();
    t.apply_snapshot(&Snapshot::parse_from_bytes(&bytes).unwrap())
        .unwrap();
    assert_eq!(t.applied_index().unwrap(), 4);
    assert_eq!(t.first_index().unwrap(), 5);
    assert_eq!(t.term(4).unwrap(), 2);
    assert_eq!(t.initial_state().unwrap().conf_state.voters, vec![1]);
    assert!(t.get(&mesh("a", &[]).key()).unwrap().is_some());
    assert_eq!(
        t.list("Mesh", "", &[("k".into(), Some("v".into()))], None, 10)
            .unwrap()
            .items
            .len(),
        1,
        "label index rebuilt"
    );
    assert_eq!(t.members().unwrap().len(), 1);
    // A zone older than the snapshot gets a full set from this node; a current one a delta.
    let all = |_: &str, _: &str| true;
    assert!(t.changes_since(1, &all).unwrap().full);
    assert!(!t.changes_since(4, &all).unwrap().full);
}

#[test]
fn a_mesh_with_resources_cannot_be_deleted_and_policies_need_their_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let timeout = |mesh: &str| {
        Resource::from_json(format!(r#"{{"type":"MeshTimeout","mesh":"{mesh}","name":"t","spec":{{"targetRef":{{"kind":"Mesh"}}}}}}"#).as_bytes()).unwrap()
    };
    let mut b = s.apply_batch();
    let cmd = Command::Put {
        resource: Box::new(timeout("nowhere")),
        expected_version: None,
    };
    assert_eq!(
        b.apply(1, time::OffsetDateTime::UNIX_EPOCH, cmd).unwrap(),
        Err(ApplyError::MeshMissing("nowhere".into()))
    );
    put(&mut b, 2, mesh("default", &[]));
    put(&mut b, 3, timeout("default"));
    b.commit().unwrap();
    let mut b = s.apply_batch();
    let del = |name: &str| Command::Delete {
        key: mesh(name, &[]).key(),
        expected_version: None,
    };
    assert_eq!(
        b.apply(4, time::OffsetDateTime::UNIX_EPOCH, del("default"))
            .unwrap(),
        Err(ApplyError::MeshNotEmpty("default".into()))
    );
    b.commit().unwrap();
    assert!(
        s.get(&mesh("default", &[]).key()).unwrap().is_some(),
        "nothing deleted"
    );
}

fn policy(name: &str) -> Resource {
    Resource::from_json(
        format!(r#"{{"type":"MeshTimeout","mesh":"m","name":"{name}","spec":{{"targetRef":{{"kind":"Mesh"}}}}}}"#)
            .as_bytes(),
    )
    .unwrap()
}

fn names(set: &SyncSet) -> Vec<String> {
    set.upserts
        .iter()
        .map(|b| serde_json::from_slice::<Resource>(b).unwrap().name)
        .collect()
}

const EPOCH: time::OffsetDateTime = time::OffsetDateTime::UNIX_EPOCH;

#[test]
fn changes_since_gives_the_latest_state_of_each_changed_resource() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let all = |_: &str, _: &str| true;
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    put(&mut b, 2, policy("a"));
    put(&mut b, 3, policy("b"));
    put(&mut b, 4, policy("c"));
    b.commit().unwrap();
    assert_eq!(s.last_change_index(), 4);

    // A zone that never synced gets everything, as a full set.
    let full = s.changes_since(0, &all).unwrap();
    assert!(full.full);
    assert_eq!(full.revision, 4);
    assert_eq!(names(&full), vec!["m", "a", "b", "c"]);

    // After revision 4: a changed twice (sent once, latest), b deleted, d created.
    let mut b2 = s.apply_batch();
    let mut a2 = policy("a");
    a2.labels.insert("v".into(), "2".into());
    put(&mut b2, 5, policy("a"));
    put(&mut b2, 6, a2);
    b2.apply(
        7,
        EPOCH,
        Command::Delete {
            key: policy("b").key(),
            expected_version: None,
        },
    )
    .unwrap()
    .unwrap();
    put(&mut b2, 8, policy("d"));
    b2.commit().unwrap();
    let d = s.changes_since(4, &all).unwrap();
    assert!(!d.full);
    assert_eq!(d.revision, 8);
    assert_eq!(names(&d), vec!["a", "d"]);
    let a: Resource = serde_json::from_slice(&d.upserts[0]).unwrap();
    assert_eq!(a.labels.get("v").map(String::as_str), Some("2"));
    assert_eq!(a.version, Some(6));
    assert_eq!(d.tombstones, vec![policy("b").key()]);
    // Nothing new after the latest revision.
    let none = s.changes_since(8, &all).unwrap();
    assert!(!none.full && none.upserts.is_empty() && none.tombstones.is_empty());

    // Once the changelog is pruned past a zone's revision, it gets a full set again.
    s.prune_changes(6).unwrap();
    assert!(s.changes_since(4, &all).unwrap().full);
    let after_prune = s.changes_since(6, &all).unwrap();
    assert!(!after_prune.full);
    assert_eq!(after_prune.tombstones.len(), 1);
    // The changelog survives a reopen.
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.last_change_index(), 8);
    assert_eq!(names(&s.changes_since(6, &all).unwrap()), vec!["d"]);
}

#[test]
fn zone_reports_never_overwrite_global_or_other_zones_resources() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    add_tokens(&s, &[("zone-a", "t1"), ("zone-b", "t2")]);
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    put(&mut b, 2, policy("global-one"));
    let out = b
        .apply(
            3,
            EPOCH,
            Command::ZoneSync {
                zone: "zone-a".into(),
                upserts: vec![policy("global-one"), policy("mine")],
                deletes: vec![],
            },
        )
        .unwrap()
        .unwrap();
    b.commit().unwrap();
    let WriteOutcome::ZoneSynced { refused } = out else {
        panic!("{out:?}")
    };
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, policy("global-one").key());
    let mine = s.get(&policy("mine").key()).unwrap().unwrap();
    assert_eq!(mine.origin.as_deref(), Some("zone-a"));
    assert_eq!(
        s.get(&policy("global-one").key())
            .unwrap()
            .unwrap()
            .origin
            .as_deref(),
        Some("global")
    );
    // Another zone can neither take nor delete zone-a's resource; global cannot change it.
    let mut b = s.apply_batch();
    let out = b
        .apply(
            4,
            EPOCH,
            Command::ZoneSync {
                zone: "zone-b".into(),
                upserts: vec![policy("mine")],
                deletes: vec![policy("mine").key()],
            },
        )
        .unwrap()
        .unwrap();
    let put_global = b
        .apply(
            5,
            EPOCH,
            Command::Put {
                resource: Box::new(policy("mine")),
                expected_version: None,
            },
        )
        .unwrap();
    b.commit().unwrap();
    assert!(matches!(out, WriteOutcome::ZoneSynced { refused } if refused.len() == 1));
    assert!(matches!(put_global, Err(ApplyError::OwnedElsewhere { .. })));
    assert_eq!(
        s.get(&policy("mine").key())
            .unwrap()
            .unwrap()
            .origin
            .as_deref(),
        Some("zone-a")
    );
    // The changelog records origins, so a filter can keep zone-a's resource from zones.
    let to_zone_b = s
        .changes_since(2, &|kind, origin| {
            crate::kds::sent_to_zone("zone-b", kind, origin)
        })
        .unwrap();
    assert!(
        names(&to_zone_b).is_empty(),
        "zone-a's policy is not sent to zone-b"
    );
}

#[test]
fn zone_status_from_an_older_session_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let st = |session: u64, connected_ms: i64, connected: bool| {
        Command::ZoneStatus(Box::new(ZoneStatusRecord {
            zone: "z".into(),
            session,
            connected_unix_ms: connected_ms,
            connected,
            ..Default::default()
        }))
    };
    let mut b = s.apply_batch();
    b.apply(1, EPOCH, st(1, 100, true)).unwrap().unwrap();
    b.commit().unwrap();
    let mut b = s.apply_batch();
    // The zone reconnected elsewhere (session 2), then session 1's late "disconnected".
    b.apply(2, EPOCH, st(2, 200, true)).unwrap().unwrap();
    b.commit().unwrap();
    let mut b = s.apply_batch();
    b.apply(3, EPOCH, st(1, 100, false)).unwrap().unwrap();
    b.commit().unwrap();
    let cur = s.zone_status("z").unwrap().unwrap();
    assert_eq!((cur.session, cur.connected), (2, true));
    // Zone status is not a resource change: no KDS wake-ups for it.
    assert_eq!(s.last_change_index(), 0);
}

#[test]
fn a_sealed_mesh_ca_key_is_stored_sealed_and_opens_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let sealer = crate::sealing::Sealer::new(&[3u8; 32]).unwrap();
    let key_pem = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    b.apply(
        2,
        EPOCH,
        Command::SetMeshCa {
            replace: false,
            mesh: "m".into(),
            ca: MeshCa {
                cert_pem: "cert".into(),
                key_pem: sealer.seal(key_pem),
                ..MeshCa::default()
            },
        },
    )
    .unwrap()
    .unwrap();
    b.commit().unwrap();
    let stored = s.mesh_ca("m").unwrap().unwrap();
    assert!(!stored.key_pem.contains("PRIVATE KEY"));
    assert_eq!(sealer.open(&stored.key_pem).unwrap(), key_pem);
    let other = crate::sealing::Sealer::new(&[4u8; 32]).unwrap();
    assert!(other.open(&stored.key_pem).is_err());
    // Nothing in the state machine holds the key in clear.
    for item in s.db.iterator_cf(s.cf(CF_META), IteratorMode::Start) {
        let (_, v) = item.unwrap();
        assert!(!String::from_utf8_lossy(&v).contains("secret"));
    }
}

fn ingress(name: &str, zone: &str) -> Resource {
    Resource::from_json(
        serde_json::json!({"type": "ZoneIngress", "mesh": "m", "name": name,
            "spec": {"zone": zone, "address": "10.0.0.5", "port": 10001}})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// Records zone tokens, committed (a zone's reports are checked against them).
fn add_tokens(s: &Store, tokens: &[(&str, &str)]) {
    let mut b = s.apply_batch();
    for (zone, id) in tokens {
        b.apply(1, EPOCH, token(zone, id)).unwrap().unwrap();
    }
    b.commit().unwrap();
}

fn token(zone: &str, id: &str) -> Command {
    Command::AddZoneToken(crate::command::ZoneTokenRecord {
        zone: zone.into(),
        id: id.into(),
        sha256: "00".into(),
        created_unix: 0,
        expires_unix: i64::MAX,
        enrolled_key_sha256: None,
        enrolled_unix: None,
    })
}

/// A zone speaks for itself only: an ingress it reports that names another zone (which
/// would draw that zone's cross-zone traffic to an address of its choosing) is refused,
/// and its own is recorded.
#[test]
fn a_zone_cannot_report_an_ingress_of_another_zone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    add_tokens(&s, &[("zone-a", "t1")]);
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    let out = b
        .apply(
            2,
            EPOCH,
            Command::ZoneSync {
                zone: "zone-a".into(),
                upserts: vec![ingress("fake", "zone-b"), ingress("own", "zone-a")],
                deletes: vec![],
            },
        )
        .unwrap()
        .unwrap();
    b.commit().unwrap();
    let WriteOutcome::ZoneSynced { refused } = out else {
        panic!("{out:?}")
    };
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, ingress("fake", "zone-b").key());
    assert!(
        refused[0].1.contains("comes from zone \"zone-a\""),
        "{refused:?}"
    );
    assert!(s.get(&ingress("fake", "zone-b").key()).unwrap().is_none());
    assert!(s.get(&ingress("own", "zone-a").key()).unwrap().is_some());
}

/// Revoking one of a zone's tokens keeps what it reported; revoking its last one takes
/// all of it out (tombstones in the changelog, so every other zone drops it too), and
/// leaves other zones' resources be.
#[test]
fn a_zone_revoked_for_good_takes_what_it_reported_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    add_tokens(&s, &[("zone-a", "t1"), ("zone-a", "t2"), ("zone-b", "t3")]);
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    for (i, (zone, name)) in [("zone-a", "a-ingress"), ("zone-b", "b-ingress")]
        .into_iter()
        .enumerate()
    {
        b.apply(
            5 + i as u64,
            EPOCH,
            Command::ZoneSync {
                zone: zone.into(),
                upserts: vec![ingress(name, zone)],
                deletes: vec![],
            },
        )
        .unwrap()
        .unwrap();
    }
    b.commit().unwrap();
    let revoke = |index, id: Option<&str>| {
        let mut b = s.apply_batch();
        b.apply(
            index,
            EPOCH,
            Command::RevokeZoneTokens {
                zone: "zone-a".into(),
                id: id.map(str::to_owned),
            },
        )
        .unwrap()
        .unwrap();
        b.commit().unwrap();
    };
    revoke(7, Some("t1"));
    assert!(
        s.get(&ingress("a-ingress", "zone-a").key())
            .unwrap()
            .is_some(),
        "t2 is left"
    );
    revoke(8, Some("t2"));
    assert!(
        s.get(&ingress("a-ingress", "zone-a").key())
            .unwrap()
            .is_none()
    );
    assert!(
        s.get(&ingress("b-ingress", "zone-b").key())
            .unwrap()
            .is_some()
    );
    let to_zone_b = s
        .changes_since(7, &|kind, origin| {
            crate::kds::sent_to_zone("zone-b", kind, origin)
        })
        .unwrap();
    assert_eq!(to_zone_b.tombstones.len(), 1, "zone-b is told to drop it");
    // A change set of zone-a's still on its way brings nothing back.
    let mut b = s.apply_batch();
    let out = b
        .apply(
            9,
            EPOCH,
            Command::ZoneSync {
                zone: "zone-a".into(),
                upserts: vec![ingress("a-ingress", "zone-a")],
                deletes: vec![],
            },
        )
        .unwrap()
        .unwrap();
    b.commit().unwrap();
    assert!(matches!(out, WriteOutcome::ZoneSynced { refused } if refused.len() == 1));
    assert!(
        s.get(&ingress("a-ingress", "zone-a").key())
            .unwrap()
            .is_none()
    );
}

#[test]
fn cluster_secrets_are_stored_as_hashes_and_sealed_keys() {
    use causeway_pki::api_token::ApiTokens;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let sealer = crate::sealing::Sealer::new(&[3u8; 32]).unwrap();
    let tokens = ApiTokens::generate();
    let clear = cluster_secrets(tokens.hashes());
    form(&s, &clear, &sealer);
    let stored = s.secrets().unwrap().unwrap();
    assert!(stored.open(&sealer).unwrap() == clear);
    let other = crate::sealing::Sealer::new(&[4u8; 32]).unwrap();
    assert!(stored.open(&other).is_err());
    for item in s.db.iterator_cf(s.cf(CF_META), IteratorMode::Start) {
        let (_, v) = item.unwrap();
        let v = String::from_utf8_lossy(&v);
        for secret in [
            tokens.admin.as_str(),
            &tokens.readonly,
            "clear-key",
            &"ab".repeat(32),
            &"cd".repeat(40),
        ] {
            assert!(!v.contains(secret), "{v}");
        }
    }

    // What an older version stored (tokens and keys in clear) does not decode: the node
    // refuses it at start instead of forming the cluster again over it.
    s.db.put_cf(
        s.cf(CF_META),
        KEY_SECRETS,
        br#"{"admin_token":"cw_x","readonly_token":"cw_y","api_ca_cert_pem":"c","api_ca_key_pem":"k"}"#,
    )
    .unwrap();
    assert!(s.secrets().is_err());
}

#[test]
fn a_zone_token_enrolls_one_key_once_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.bootstrap(vec![1]).unwrap();
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let add = |id: &str| {
        Command::AddZoneToken(crate::command::ZoneTokenRecord {
            zone: "zone-a".into(),
            id: id.into(),
            sha256: format!("sha-{id}"),
            created_unix: 100,
            expires_unix: 200,
            enrolled_key_sha256: None,
            enrolled_unix: None,
        })
    };
    let enroll = |id: &str, sha: &str, key: &str| Command::UseZoneToken {
        zone: "zone-a".into(),
        id: id.into(),
        sha256: sha.into(),
        key_sha256: key.into(),
    };
    let refused = |r: Result<WriteOutcome, ApplyError>| match r {
        Err(ApplyError::Token(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut b = s.apply_batch();
    b.apply(1, at(100), add("t1")).unwrap().unwrap();
    b.apply(2, at(100), add("t2")).unwrap().unwrap();
    // Two zones race with one token in one batch: the first key wins.
    assert_eq!(
        b.apply(3, at(150), enroll("t1", "sha-t1", "key-a"))
            .unwrap(),
        Ok(WriteOutcome::Done)
    );
    assert!(
        refused(
            b.apply(4, at(150), enroll("t1", "sha-t1", "key-b"))
                .unwrap()
        )
        .contains("already used")
    );
    b.commit().unwrap();
    let mut b = s.apply_batch();
    // The winner retries (its answer was lost): the same key is let through, even late.
    assert_eq!(
        b.apply(5, at(250), enroll("t1", "sha-t1", "key-a"))
            .unwrap(),
        Ok(WriteOutcome::Done)
    );
    assert!(
        refused(
            b.apply(6, at(160), enroll("t1", "sha-t1", "key-c"))
                .unwrap()
        )
        .contains("already used")
    );
    assert!(
        refused(
            b.apply(7, at(200), enroll("t2", "sha-t2", "key-d"))
                .unwrap()
        )
        .contains("expired")
    );
    assert!(
        refused(
            b.apply(8, at(150), enroll("t2", "altered", "key-d"))
                .unwrap()
        )
        .contains("revoked")
    );
    assert!(
        refused(
            b.apply(9, at(150), enroll("t9", "sha-t9", "key-d"))
                .unwrap()
        )
        .contains("revoked")
    );
    b.commit().unwrap();
    let t1 = s.zone_token("zone-a", "t1").unwrap().unwrap();
    assert_eq!(t1.enrolled_key_sha256.as_deref(), Some("key-a"));
    assert_eq!(t1.enrolled_unix, Some(150));
    assert_eq!(
        s.zone_token("zone-a", "t2")
            .unwrap()
            .unwrap()
            .enrolled_key_sha256,
        None
    );
}

#[test]
fn a_join_token_is_used_once_before_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.bootstrap(vec![1]).unwrap();
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let token = |sha: &str, expires_unix| JoinTokenRecord {
        node: 4,
        raft_addr: "127.0.0.1:1".into(),
        api_addr: "127.0.0.1:2".into(),
        sha256: sha.into(),
        created_unix: 100,
        expires_unix,
        used: false,
    };
    let use_it = |sha: &str| Command::UseJoinToken { sha256: sha.into() };
    let refused = |r: Result<WriteOutcome, ApplyError>| match r {
        Err(ApplyError::Token(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut b = s.apply_batch();
    b.apply(1, at(100), Command::AddJoinToken(token("aa", 200)))
        .unwrap()
        .unwrap();
    // A token of another node, to see expiry.
    b.apply(
        2,
        at(100),
        Command::AddJoinToken(JoinTokenRecord {
            node: 5,
            ..token("bb", 200)
        }),
    )
    .unwrap()
    .unwrap();
    // Two uses in one batch: the second sees the first.
    assert_eq!(
        b.apply(3, at(150), use_it("aa")).unwrap(),
        Ok(WriteOutcome::Done)
    );
    assert!(refused(b.apply(4, at(150), use_it("aa")).unwrap()).contains("already used"));
    b.commit().unwrap();
    let mut b = s.apply_batch();
    assert!(refused(b.apply(5, at(160), use_it("aa")).unwrap()).contains("already used"));
    assert!(refused(b.apply(6, at(200), use_it("bb")).unwrap()).contains("expired"));
    assert!(refused(b.apply(7, at(150), use_it("cc")).unwrap()).contains("unknown"));
    b.commit().unwrap();
    assert!(s.join_token("aa").unwrap().unwrap().used);
    assert!(!s.join_token("bb").unwrap().unwrap().used);
    assert_eq!(s.join_tokens_of(5).unwrap().len(), 1);
    assert!(s.join_tokens_of(9).unwrap().is_empty());

    // Only a node's newest token is good, and a cancel retires them all.
    let for_node = |node: u64, sha: &str| JoinTokenRecord {
        node,
        ..token(sha, 500)
    };
    let mut b = s.apply_batch();
    b.apply(8, at(300), Command::AddJoinToken(for_node(6, "old")))
        .unwrap()
        .unwrap();
    b.apply(9, at(300), Command::AddJoinToken(for_node(6, "new")))
        .unwrap()
        .unwrap();
    b.apply(10, at(300), Command::AddJoinToken(for_node(7, "other")))
        .unwrap()
        .unwrap();
    assert!(refused(b.apply(11, at(310), use_it("old")).unwrap()).contains("already used"));
    b.commit().unwrap();
    let mut b = s.apply_batch();
    b.apply(12, at(320), Command::CancelJoinTokens { node: 6 })
        .unwrap()
        .unwrap();
    assert!(refused(b.apply(13, at(330), use_it("new")).unwrap()).contains("already used"));
    // Another node's token is untouched.
    assert_eq!(
        b.apply(14, at(330), use_it("other")).unwrap(),
        Ok(WriteOutcome::Done)
    );
    b.commit().unwrap();
}

fn api_token(id: &str, role: crate::access::ApiRole, expires_unix: i64) -> ApiTokenRecord {
    ApiTokenRecord {
        id: id.into(),
        name: id.into(),
        role,
        meshes: Vec::new(),
        sha256: format!("sha-{id}"),
        created_unix: 100,
        expires_unix,
        revoked_unix: None,
        created_by: "admin".into(),
    }
}

/// Cluster secrets with recognisable key material, so a test can look for it in clear.
fn cluster_secrets(tokens: causeway_pki::api_token::TokenHashes) -> crate::command::ClusterSecrets {
    let key = "-----BEGIN PRIVATE KEY-----\nclear-key\n-----END PRIVATE KEY-----\n";
    crate::command::ClusterSecrets {
        tokens,
        api_ca_cert_pem: "cert".into(),
        api_ca_key_pem: key.into(),
        zone_token_key: "ab".repeat(32),
        zone_ca_cert_pem: "zone cert".into(),
        zone_ca_key_pem: key.into(),
        dataplane_token_key: "cd".repeat(40),
        raft_ca_cert_pem: "raft cert".into(),
        raft_ca_key_pem: key.into(),
    }
}

/// Forms the cluster in `s`, as the first node's first entry does.
fn form(s: &Store, clear: &crate::command::ClusterSecrets, sealer: &crate::sealing::Sealer) {
    let mut b = s.apply_batch();
    b.apply(
        1,
        EPOCH,
        Command::InitCluster(Box::new(SealedSecrets::seal(clear, sealer))),
    )
    .unwrap()
    .unwrap();
    b.commit().unwrap();
}

/// A store whose cluster formed with bootstrap tokens hashed `admin-sha`/`ro-sha`.
fn formed_store(dir: &Path) -> Store {
    let s = Store::open(dir).unwrap();
    let sealer = crate::sealing::Sealer::new(&[3u8; 32]).unwrap();
    let tokens = causeway_pki::api_token::TokenHashes {
        admin_sha256: "admin-sha".into(),
        readonly_sha256: "ro-sha".into(),
        retiring: Vec::new(),
    };
    form(&s, &cluster_secrets(tokens), &sealer);
    s
}

#[test]
fn an_api_token_rotates_with_an_overlap_and_the_last_admin_is_kept() {
    use crate::access::ApiRole;
    let dir = tempfile::tempdir().unwrap();
    let s = formed_store(dir.path());
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    // The bootstrap tokens exist before anything is written about them.
    let ids: Vec<String> = s.api_tokens().unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["admin", "readonly"]);
    assert_eq!(s.api_token("admin").unwrap().unwrap().sha256, "admin-sha");

    // The only admin cannot be revoked; a viewer can.
    let mut b = s.apply_batch();
    let last = b
        .apply(2, at(1000), Command::RevokeApiToken { id: "admin".into() })
        .unwrap();
    assert!(
        matches!(&last, Err(ApplyError::Refused(why)) if why.contains("last live admin")),
        "{last:?}"
    );
    b.apply(
        3,
        at(1000),
        Command::RevokeApiToken {
            id: "readonly".into(),
        },
    )
    .unwrap()
    .unwrap();
    // Rotated in the same batch: the successor is seen by the next entry.
    let new = api_token("successor", ApiRole::Admin, crate::access::NEVER);
    b.apply(
        4,
        at(1000),
        Command::RotateApiToken {
            id: "admin".into(),
            new: new.clone(),
            overlap_secs: 60,
        },
    )
    .unwrap()
    .unwrap();
    // The old one is still live (overlap), so the successor is not the last admin ...
    b.apply(
        5,
        at(1010),
        Command::RevokeApiToken {
            id: "successor".into(),
        },
    )
    .unwrap()
    .unwrap();
    b.commit().unwrap();
    let old = s.api_token("admin").unwrap().unwrap();
    assert_eq!(old.expires_unix, 1060);
    assert!(old.live(1059) && !old.live(1060));
    assert!(
        s.api_token("readonly")
            .unwrap()
            .unwrap()
            .revoked_unix
            .is_some()
    );
    assert!(!s.api_token("successor").unwrap().unwrap().live(1011));

    // ... and a dead token is not rotated.
    let mut b = s.apply_batch();
    let dead = b
        .apply(
            6,
            at(2000),
            Command::RotateApiToken {
                id: "admin".into(),
                new: api_token("again", ApiRole::Admin, crate::access::NEVER),
                overlap_secs: 60,
            },
        )
        .unwrap();
    assert!(matches!(dead, Err(ApplyError::Refused(_))), "{dead:?}");
    let unknown = b
        .apply(7, at(2000), Command::RevokeApiToken { id: "nope".into() })
        .unwrap();
    assert_eq!(unknown, Err(ApplyError::NotFound));
}

#[test]
fn the_audit_log_keeps_the_newest_entries_in_order() {
    use crate::access::ApiRole;
    let dir = tempfile::tempdir().unwrap();
    let s = formed_store(dir.path());
    let actor = |name: &str| crate::audit::Actor {
        token_id: format!("id-{name}"),
        token_name: name.into(),
        role: ApiRole::Admin,
    };
    let total = crate::audit::RETAINED + 3;
    let mut b = s.apply_batch();
    for i in 1..=total {
        let who = if i % 2 == 0 { "even" } else { "odd" };
        let outcome = if i == total {
            Err(ApplyError::NotFound)
        } else {
            Ok(WriteOutcome::Done)
        };
        b.audit(
            i + 1,
            i as i64,
            actor(who),
            "put".into(),
            format!("thing {i}"),
            &outcome,
        )
        .unwrap();
    }
    b.commit().unwrap();
    let newest = s.audit_entries(3, |_| true).unwrap();
    let seqs: Vec<u64> = newest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [total - 2, total - 1, total]);
    assert_eq!(newest[2].outcome, "not found");
    assert_eq!(newest[0].outcome, "ok");
    let all = s.audit_entries(usize::MAX, |_| true).unwrap();
    assert_eq!(all.len() as u64, crate::audit::RETAINED);
    assert_eq!(all[0].seq, 4, "the oldest entries are dropped");
    let odd = s.audit_entries(2, |e| e.actor.token_name == "odd").unwrap();
    assert!(
        odd.iter().all(|e| e.seq % 2 == 1) && odd.len() == 2,
        "{odd:?}"
    );
}

#[test]
fn a_zone_ca_rotation_keeps_the_old_ca_until_it_finishes_and_refuses_stale_steps() {
    use crate::command::CaStep;
    let dir = tempfile::tempdir().unwrap();
    let s = formed_store(dir.path());
    let new = causeway_pki::generate_ca("zone CA").unwrap();
    let new_sha = causeway_pki::first_cert_sha256(&new.cert_pem);
    // The formed store's CA is no certificate: it hashes to "".
    let step = |expected: &str, step: CaStep| {
        let mut b = s.apply_batch();
        let r = b
            .apply(
                2,
                EPOCH,
                Command::RotateZoneCa {
                    expected_current_sha256: expected.into(),
                    step,
                },
            )
            .unwrap();
        b.commit().unwrap();
        r
    };
    let stage = CaStep::Stage {
        cert_pem: new.cert_pem.clone(),
        key_sealed: "sealed-v1:new".into(),
    };
    // A step taken against a CA that is no longer current changes nothing.
    assert!(matches!(
        step("stale", stage.clone()),
        Err(ApplyError::Refused(_))
    ));
    assert!(step("", stage.clone()).is_ok());
    let sec = s.secrets().unwrap().unwrap();
    assert_eq!(sec.zone_ca_cert_pem, new.cert_pem);
    assert_eq!(sec.zone_ca_key_sealed, "sealed-v1:new");
    assert_eq!(sec.zone_ca_previous_cert_pem, "zone cert");
    // One rotation at a time.
    assert!(matches!(
        step(&new_sha, stage.clone()),
        Err(ApplyError::Refused(why)) if why.contains("under way")
    ));
    assert!(step(&new_sha, CaStep::Finish).is_ok());
    let sec = s.secrets().unwrap().unwrap();
    assert!(sec.zone_ca_previous_cert_pem.is_empty());
    assert_eq!(sec.zone_ca_cert_pem, new.cert_pem);
    assert!(matches!(
        step(&new_sha, CaStep::Finish),
        Err(ApplyError::Refused(why)) if why.contains("no zone CA rotation")
    ));
}

fn dataplane(name: &str, services: &[&str]) -> Resource {
    let inbound: Vec<_> = services
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"port": 20001 + i, "service": s}))
        .collect();
    Resource::from_json(
        serde_json::json!({"type": "Dataplane", "mesh": "m", "name": name,
            "spec": {"address": "10.0.0.7", "inbound": inbound}})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// The virtual IPs of mesh `m`, by service (`service@zone` for a zone's), as committed.
fn vips(s: &Store) -> BTreeMap<String, String> {
    s.list("VirtualIp", "m", &[], None, usize::MAX)
        .unwrap()
        .items
        .into_iter()
        .map(|r| {
            let v: causeway_api::VirtualIpSpec = serde_json::from_value(r.spec).unwrap();
            let key = match v.zone {
                Some(zone) => format!("{}@{zone}", v.service),
                None => v.service,
            };
            (key, v.ip.to_string())
        })
        .collect()
}

fn sync(b: &mut ApplyBatch<'_>, index: u64, upserts: Vec<Resource>, deletes: Vec<ResourceKey>) {
    let cmd = Command::ZoneSync {
        zone: "zone-a".into(),
        upserts,
        deletes,
    };
    b.apply(index, EPOCH, cmd).unwrap().unwrap();
}

/// Each service a zone reports gets the lowest free address of the mesh's range, and
/// one more in that zone, in name order, in the apply (so every node computes the
/// same); an address never
/// moves: not when its Dataplane leaves, nor when the range changes; a full range
/// leaves a new service without one; the addresses go with their mesh.
#[test]
fn services_get_stable_virtual_ips_from_the_meshs_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    add_tokens(&s, &[("zone-a", "t1")]);
    let mut small = mesh("m", &[]);
    small.spec = serde_json::json!({"networking": {"virtualIps": {"cidr": "241.0.0.0/28"}}});
    let mut b = s.apply_batch();
    put(&mut b, 2, small.clone());
    // One batch: the second entry sees the first one's allocations.
    sync(
        &mut b,
        3,
        vec![dataplane("dp-1", &["web", "backend"])],
        vec![],
    );
    sync(
        &mut b,
        4,
        vec![dataplane("dp-2", &["backend", "db"])],
        vec![],
    );
    b.commit().unwrap();
    let want = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(s, ip)| (s.to_string(), ip.to_string()))
            .collect()
    };
    assert_eq!(
        vips(&s),
        want(&[
            ("backend", "241.0.0.1"),
            ("backend@zone-a", "241.0.0.2"),
            ("web", "241.0.0.3"),
            ("web@zone-a", "241.0.0.4"),
            ("db", "241.0.0.5"),
            ("db@zone-a", "241.0.0.6"),
        ])
    );
    let backend = s
        .get(&ResourceKey {
            kind: "VirtualIp".into(),
            mesh: "m".into(),
            name: "backend".into(),
        })
        .unwrap()
        .unwrap();
    assert_eq!(backend.origin.as_deref(), Some("global"));
    assert_eq!(backend.version, Some(3));

    // The Dataplanes leave and come back, the range moves: the addresses stay; a new
    // service takes the new range's first address.
    let mut b = s.apply_batch();
    sync(
        &mut b,
        5,
        vec![],
        vec![dataplane("dp-1", &[]).key(), dataplane("dp-2", &[]).key()],
    );
    let mut moved = small.clone();
    moved.spec = serde_json::json!({"networking": {"virtualIps": {"cidr": "242.0.0.0/30"}}});
    put(&mut b, 6, moved);
    sync(
        &mut b,
        7,
        vec![dataplane("dp-3", &["db", "cache", "queue", "zz-late"])],
        vec![],
    );
    b.commit().unwrap();
    assert_eq!(
        vips(&s),
        want(&[
            ("backend", "241.0.0.1"),
            ("backend@zone-a", "241.0.0.2"),
            ("web", "241.0.0.3"),
            ("web@zone-a", "241.0.0.4"),
            ("db", "241.0.0.5"),
            ("db@zone-a", "241.0.0.6"),
            ("cache", "242.0.0.1"),
            ("cache@zone-a", "242.0.0.2"),
        ]),
        "a /30 holds two; queue and zz-late get none"
    );

    // Virtual IPs do not keep a mesh alive; they go with it.
    let mut b = s.apply_batch();
    sync(&mut b, 8, vec![], vec![dataplane("dp-3", &[]).key()]);
    b.commit().unwrap();
    let mut b = s.apply_batch();
    let del = Command::Delete {
        key: small.key(),
        expected_version: None,
    };
    b.apply(9, EPOCH, del).unwrap().unwrap();
    b.commit().unwrap();
    assert!(vips(&s).is_empty());
}

/// A Mesh written gives the services of Dataplanes stored before virtual IPs existed
/// theirs (an upgraded cluster).
#[test]
fn writing_a_mesh_allocates_for_the_dataplanes_already_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut b = s.apply_batch();
    put(&mut b, 1, mesh("m", &[]));
    b.commit().unwrap();
    // Stored as an older version did: no allocation with it.
    let mut b = s.apply_batch();
    b.applied = Some(2);
    let dp = dataplane("dp-1", &["web"]);
    b.write(&dp.key(), None, Some(dp.clone()));
    b.commit().unwrap();
    assert!(vips(&s).is_empty());
    let mut b = s.apply_batch();
    put(&mut b, 3, mesh("m", &[("team", "a")]));
    b.commit().unwrap();
    assert_eq!(vips(&s).get("web").map(String::as_str), Some("241.0.0.1"));
}
