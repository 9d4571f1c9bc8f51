//! RocksDB storage of one node: the Raft log and hard state (implementing
//! [`raft::Storage`]) and the state machine (resources, label index, cluster metadata),
//! each in its own column family of one database so a Ready is persisted atomically.
//!
//! Durability: log entries, hard state and snapshots are written with `sync`; state machine
//! writes are not, because after a crash the node re-applies the durable log from its last
//! persisted applied index and applying is deterministic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use causeway_api::{Resource, ResourceKey};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::access::{ApiTokenRecord, BOOTSTRAP_ADMIN_ID, BOOTSTRAP_READONLY_ID, NEVER};
use crate::audit::AuditEntry;
use crate::command::{
    ApplyError, Command, IntermediateRecord, JoinTokenRecord, Member, MeshCa, ProxyTokenRecord,
    SealedSecrets, WriteOutcome, ZoneStatusRecord, ZoneTokenRecord,
};

const CF_LOG: &str = "raft_log";
const CF_RAFT: &str = "raft_state";
const CF_RESOURCES: &str = "resources";
const CF_LABELS: &str = "label_index";
const CF_META: &str = "sm_meta";
/// Which resources changed at which index, for KDS deltas. Local to each node (not in
/// snapshots): after installing a snapshot a node keeps changes from its index on.
const CF_CHANGES: &str = "changelog";
const COLUMN_FAMILIES: [&str; 6] = [
    CF_LOG,
    CF_RAFT,
    CF_RESOURCES,
    CF_LABELS,
    CF_META,
    CF_CHANGES,
];

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_SECRETS: &[u8] = b"cluster_secrets";
const KEY_MEMBER_PREFIX: &[u8] = b"member/";
const KEY_ZONE_TOKEN_PREFIX: &[u8] = b"zone_token/";
const KEY_JOIN_TOKEN_PREFIX: &[u8] = b"join_token/";
/// Dataplane and ingress tokens issued, by id.
const KEY_PROXY_TOKEN_PREFIX: &[u8] = b"proxy_token/";
/// The revoked ones again, so what KDS sends every zone is read without a scan of all.
const KEY_REVOKED_PROXY_TOKEN_PREFIX: &[u8] = b"revoked_proxy_token/";
const KEY_ZONE_STATUS_PREFIX: &[u8] = b"zone_status/";
const KEY_MESH_CA_PREFIX: &[u8] = b"mesh_ca/";
const KEY_INTERMEDIATE_PREFIX: &[u8] = b"intermediate/";
const KEY_SECRET_PREFIX: &[u8] = b"secret/";
/// The token-signing keys after a rotation (absent: the cluster's first key signs).
const KEY_TOKEN_SIGNING_KEYS: &[u8] = b"token_signing_keys";
/// API tokens, by id (see [`crate::access`]).
const KEY_API_TOKEN_PREFIX: &[u8] = b"api_token/";
/// The audit log, by sequence number (see [`crate::audit`]), and its last number.
const KEY_AUDIT_PREFIX: &[u8] = b"audit/";
const KEY_AUDIT_SEQ: &[u8] = b"audit_seq";
/// In CF_RAFT: the changelog holds every change after this index.
const KEY_CHANGES_FLOOR: &[u8] = b"changes_floor";

fn audit_key(seq: u64) -> Vec<u8> {
    prefixed(KEY_AUDIT_PREFIX, &format!("{seq:020}"))
}

/// Errors of the storage layer. Any of them makes the node stop serving: the data dir is
/// damaged or the disk failed, and continuing could lose acknowledged writes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error(
        "the store in {path} is damaged ({source}): restore the data dir from a backup, or empty it and add this node to its cluster again (`causeway cluster remove-node`, then `add-node`: the cluster sends it everything)"
    )]
    Damaged {
        path: String,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt {what} in the data dir: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// The in-memory mirror of the log's bounds, kept so `raft::Storage` calls that Raft makes
/// constantly (term, first/last index) never touch the disk.
#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction or covered by a snapshot.
    truncated_index: u64,
    truncated_term: u64,
    /// Terms of entries `truncated_index + 1 ..= last_index`.
    terms: Vec<u64>,
}

impl LogState {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }
    fn last_index(&self) -> u64 {
        self.truncated_index + self.terms.len() as u64
    }
}

/// One node's storage. Cheap to clone; all clones share the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    log: Arc<RwLock<LogState>>,
    /// Index of the last resource change (the changelog's newest entry or its floor).
    last_change: Arc<std::sync::atomic::AtomicU64>,
    /// Raft snapshots this node built for a follower, and installed from a leader.
    snapshots: Arc<SnapshotCounts>,
}

/// Counts of Raft snapshots, for the node's metrics.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    pub built: std::sync::atomic::AtomicU64,
    pub installed: std::sync::atomic::AtomicU64,
}

/// What a zone needs to catch up: the changes after its revision, or a full snapshot.
#[derive(Debug, Default)]
pub struct SyncSet {
    /// The revision (applied index) the set brings the zone to.
    pub revision: u64,
    /// A full snapshot: the zone replaces its copy.
    pub full: bool,
    /// Created or updated resources, as stored JSON.
    pub upserts: Vec<Vec<u8>>,
    /// Deleted resources.
    pub tombstones: Vec<ResourceKey>,
}

/// A page of resources from a list query.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Resource>,
    /// Name to pass as `after` to get the next page, if there is one.
    pub next: Option<String>,
}

fn u64_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub(crate) fn resource_key_bytes(key: &ResourceKey) -> Vec<u8> {
    format!("{}\0{}\0{}", key.kind, key.mesh, key.name).into_bytes()
}

fn parse_resource_key(b: &[u8]) -> Result<ResourceKey, StoreError> {
    let s = std::str::from_utf8(b).map_err(|e| corrupt("resource key", e))?;
    let mut parts = s.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(mesh), Some(name)) => Ok(ResourceKey {
            kind: kind.into(),
            mesh: mesh.into(),
            name: name.into(),
        }),
        _ => Err(corrupt("resource key", "expected kind, mesh and name")),
    }
}

fn label_key_bytes(key: &ResourceKey, label: &str, value: &str) -> Vec<u8> {
    format!(
        "{}\0{}\0{}={}\0{}",
        key.kind, key.mesh, label, value, key.name
    )
    .into_bytes()
}

fn u64_from(b: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        b.try_into().map_err(|_| corrupt("index", "not 8 bytes"))?,
    ))
}

fn prefixed(prefix: &[u8], rest: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(rest.as_bytes());
    k
}

/// Changelog value: 1 byte (0 upsert, 1 delete) then the resource's origin.
fn change_value(deleted: bool, origin: &str) -> Vec<u8> {
    let mut v = vec![u8::from(deleted)];
    v.extend_from_slice(origin.as_bytes());
    v
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn to_raft_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = COLUMN_FAMILIES
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| {
            let path = dir.display().to_string();
            match source.kind() {
                rocksdb::ErrorKind::Corruption => StoreError::Damaged { path, source },
                _ => StoreError::Open { path, source },
            }
        })?;
        let store = Store {
            db: Arc::new(db),
            log: Arc::default(),
            last_change: Arc::default(),
            snapshots: Arc::default(),
        };
        store.load_log_state()?;
        let last = match store
            .db
            .iterator_cf(store.cf(CF_CHANGES), IteratorMode::End)
            .next()
        {
            Some(item) => {
                let (k, _) = item?;
                u64_from(&k[..8])?
            }
            None => store.changes_floor()?,
        };
        store
            .last_change
            .store(last, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn load_log_state(&self) -> Result<(), StoreError> {
        let mut st = LogState::default();
        let raft = self.cf(CF_RAFT);
        if let Some(b) = self.db.get_cf(raft, KEY_HARD_STATE)? {
            st.hard_state =
                HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?;
        }
        if let Some(b) = self.db.get_cf(raft, KEY_CONF_STATE)? {
            st.conf_state =
                ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?;
        }
        if let Some(b) = self.db.get_cf(raft, KEY_TRUNCATED)? {
            let (i, t): (u64, u64) =
                serde_json::from_slice(&b).map_err(|e| corrupt("truncated state", e))?;
            st.truncated_index = i;
            st.truncated_term = t;
        }
        let mut expected = st.truncated_index + 1;
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start) {
            let (k, v) = item?;
            let e = Entry::parse_from_bytes(&v).map_err(|e| corrupt("log entry", e))?;
            if e.index < expected {
                continue; // left over from a compaction interrupted by a crash
            }
            if e.index != expected || k.as_ref() != u64_key(e.index) {
                return Err(corrupt("raft log", format!("gap before entry {}", e.index)));
            }
            st.terms.push(e.term);
            expected += 1;
        }
        // The commit index is persisted lazily; entries we applied were certainly committed.
        let applied = self.applied_index()?;
        if st.hard_state.commit < applied {
            st.hard_state.commit = applied;
        }
        *self.log.write().expect("log lock poisoned") = st;
        Ok(())
    }

    /// True when this node has never been part of a cluster (fresh data dir).
    pub fn is_empty(&self) -> bool {
        let st = self.log.read().expect("log lock poisoned");
        st.conf_state.voters.is_empty() && st.conf_state.learners.is_empty() && st.last_index() == 0
    }

    /// Sets the initial membership of a new cluster (etcd's `initial-cluster`), as if a
    /// snapshot at index 1 (term 1) holding it had been applied, as raft-rs's own
    /// examples start: the log then begins at 2, so a node that joins later with an
    /// empty log is sent a snapshot, which carries the membership. (Replaying the log
    /// from 1 would start it from no voters at all: the initial membership is in no
    /// entry, and a node that joined a one-node cluster would leave that node out.)
    pub fn bootstrap(&self, voters: Vec<u64>) -> Result<(), StoreError> {
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let cs_bytes = cs.write_to_bytes().expect("conf state encodes");
        let hs = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT), KEY_CONF_STATE, &cs_bytes);
        batch.put_cf(self.cf(CF_META), KEY_CONF_STATE, &cs_bytes);
        batch.put_cf(
            self.cf(CF_RAFT),
            KEY_TRUNCATED,
            serde_json::to_vec(&(1u64, 1u64)).expect("encodes"),
        );
        batch.put_cf(
            self.cf(CF_RAFT),
            KEY_HARD_STATE,
            hs.write_to_bytes().expect("hard state encodes"),
        );
        batch.put_cf(self.cf(CF_META), KEY_APPLIED, u64_key(1));
        self.db.write_opt(batch, &sync_opts())?;
        let mut st = self.log.write().expect("log lock poisoned");
        st.conf_state = cs;
        st.hard_state = hs;
        st.truncated_index = 1;
        st.truncated_term = 1;
        Ok(())
    }

    // === Raft log writes (called from the Raft thread only) ===

    /// Persists new entries and, if given, the hard state, in one synced write.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StoreError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut st = self.log.write().expect("log lock poisoned");
        let mut batch = WriteBatch::default();
        let log = self.cf(CF_LOG);
        if let Some(first) = entries.first() {
            if first.index <= st.truncated_index {
                return Err(corrupt(
                    "append",
                    format!("entry {} is already compacted", first.index),
                ));
            }
            // Entries past the new ones were overwritten by a new leader: drop them.
            let last = st.last_index();
            let new_last = entries.last().map_or(0, |e| e.index);
            if new_last < last {
                batch.delete_range_cf(log, u64_key(new_last + 1), u64_key(last + 1));
            }
            for e in entries {
                batch.put_cf(
                    log,
                    u64_key(e.index),
                    e.write_to_bytes().expect("entry encodes"),
                );
            }
        }
        if let Some(hs) = hs {
            batch.put_cf(
                self.cf(CF_RAFT),
                KEY_HARD_STATE,
                hs.write_to_bytes().expect("hard state encodes"),
            );
        }
        self.db.write_opt(batch, &sync_opts())?;
        if let Some(first) = entries.first() {
            let keep = (first.index - st.truncated_index - 1) as usize;
            st.terms.truncate(keep);
            st.terms.extend(entries.iter().map(|e| e.term));
        }
        if let Some(hs) = hs {
            st.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index. Not synced: see the module comment.
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut st = self.log.write().expect("log lock poisoned");
        st.hard_state.commit = commit;
        self.db.put_cf(
            self.cf(CF_RAFT),
            KEY_HARD_STATE,
            st.hard_state.write_to_bytes().expect("hard state encodes"),
        )?;
        Ok(())
    }

    /// Drops log entries up to and including `index`, which must be applied.
    pub fn compact(&self, index: u64) -> Result<(), StoreError> {
        let mut st = self.log.write().expect("log lock poisoned");
        if index <= st.truncated_index || index > st.last_index() {
            return Ok(());
        }
        let term = st.terms[(index - st.truncated_index - 1) as usize];
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_RAFT),
            KEY_TRUNCATED,
            serde_json::to_vec(&(index, term)).expect("encodes"),
        );
        batch.delete_range_cf(self.cf(CF_LOG), u64_key(0), u64_key(index + 1));
        self.db.write_opt(batch, &sync_opts())?;
        let n = (index - st.truncated_index) as usize;
        st.terms.drain(..n);
        st.truncated_index = index;
        st.truncated_term = term;
        Ok(())
    }

    /// Number of entries currently held in the log.
    pub fn log_len(&self) -> u64 {
        self.log.read().expect("log lock poisoned").terms.len() as u64
    }

    pub fn first_log_index(&self) -> u64 {
        self.log.read().expect("log lock poisoned").first_index()
    }

    // === Snapshots ===

    /// Serializes the state machine as of its applied index.
    pub fn build_snapshot(&self) -> Result<Snapshot, StoreError> {
        let applied = self.applied_index()?;
        let st = self.log.read().expect("log lock poisoned");
        let term = if applied == st.truncated_index {
            st.truncated_term
        } else if applied > st.truncated_index && applied <= st.last_index() {
            st.terms[(applied - st.truncated_index - 1) as usize]
        } else {
            return Err(corrupt(
                "snapshot",
                format!("applied index {applied} is outside the log"),
            ));
        };
        let conf_state = match self.db.get_cf(self.cf(CF_META), KEY_CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?,
            None => st.conf_state.clone(),
        };
        drop(st);
        // One RocksDB snapshot so the dump is consistent even if a write lands meanwhile.
        let snap = self.db.snapshot();
        let mut data = Vec::new();
        for (tag, cf) in [(0u8, CF_RESOURCES), (1u8, CF_META)] {
            for item in snap.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, v) = item?;
                data.push(tag);
                data.extend_from_slice(&(k.len() as u32).to_be_bytes());
                data.extend_from_slice(&k);
                data.extend_from_slice(&(v.len() as u32).to_be_bytes());
                data.extend_from_slice(&v);
            }
        }
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        let mut s = Snapshot::default();
        s.set_metadata(meta);
        s.data = data.into();
        self.snapshots
            .built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(s)
    }

    /// Raft snapshots built and installed since the node started.
    pub fn snapshot_counts(&self) -> &SnapshotCounts {
        &self.snapshots
    }

    /// Replaces the whole state (machine and log) with a snapshot from the leader.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let mut st = self.log.write().expect("log lock poisoned");
        let mut batch = WriteBatch::default();
        for cf in [CF_RESOURCES, CF_LABELS, CF_META, CF_LOG, CF_CHANGES] {
            let cf = self.cf(cf);
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item?;
                batch.delete_cf(cf, k);
            }
        }
        let data: &[u8] = &snap.data;
        let mut pos = 0;
        let read = |pos: &mut usize, n: usize| -> Result<&[u8], StoreError> {
            let s = data
                .get(*pos..*pos + n)
                .ok_or_else(|| corrupt("snapshot", "truncated data"))?;
            *pos += n;
            Ok(s)
        };
        while pos < data.len() {
            let tag = read(&mut pos, 1)?[0];
            let klen = u32::from_be_bytes(read(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
            let k = read(&mut pos, klen)?.to_vec();
            let vlen = u32::from_be_bytes(read(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
            let v = read(&mut pos, vlen)?;
            match tag {
                0 => {
                    let r: Resource =
                        serde_json::from_slice(v).map_err(|e| corrupt("snapshot resource", e))?;
                    for (lk, lv) in &r.labels {
                        batch.put_cf(self.cf(CF_LABELS), label_key_bytes(&r.key(), lk, lv), b"");
                    }
                    batch.put_cf(self.cf(CF_RESOURCES), k, v);
                }
                1 => batch.put_cf(self.cf(CF_META), k, v),
                t => return Err(corrupt("snapshot", format!("unknown section {t}"))),
            }
        }
        batch.put_cf(self.cf(CF_META), KEY_APPLIED, u64_key(meta.index));
        // Zones behind this index get a full snapshot; newer changes are logged again.
        batch.put_cf(self.cf(CF_RAFT), KEY_CHANGES_FLOOR, u64_key(meta.index));
        let cs = meta
            .get_conf_state()
            .write_to_bytes()
            .expect("conf state encodes");
        batch.put_cf(self.cf(CF_META), KEY_CONF_STATE, &cs);
        batch.put_cf(self.cf(CF_RAFT), KEY_CONF_STATE, &cs);
        batch.put_cf(
            self.cf(CF_RAFT),
            KEY_TRUNCATED,
            serde_json::to_vec(&(meta.index, meta.term)).expect("encodes"),
        );
        let mut hs = st.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        batch.put_cf(
            self.cf(CF_RAFT),
            KEY_HARD_STATE,
            hs.write_to_bytes().expect("hard state encodes"),
        );
        self.db.write_opt(batch, &sync_opts())?;
        st.hard_state = hs;
        st.conf_state = meta.get_conf_state().clone();
        st.truncated_index = meta.index;
        st.truncated_term = meta.term;
        st.terms.clear();
        self.last_change
            .store(meta.index, std::sync::atomic::Ordering::SeqCst);
        self.snapshots
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    // === State machine ===

    pub fn applied_index(&self) -> Result<u64, StoreError> {
        Ok(match self.db.get_cf(self.cf(CF_META), KEY_APPLIED)? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("applied index", "not 8 bytes"))?,
            ),
            None => 0,
        })
    }

    /// Starts a batch of state machine changes; see [`ApplyBatch`].
    pub fn apply_batch(&self) -> ApplyBatch<'_> {
        ApplyBatch {
            store: self,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            join_tokens: HashMap::new(),
            meta_overlay: HashMap::new(),
            applied: None,
            conf_state: None,
            changed: false,
        }
    }

    pub fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_RESOURCES), resource_key_bytes(key))?
        {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt("resource", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Lists resources of `kind` in `mesh` ("" for global types), in name order, matching
    /// every `(key, value)` of `selector` (a `None` value means "has the label").
    pub fn list(
        &self,
        kind: &str,
        mesh: &str,
        selector: &[(String, Option<String>)],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let prefix = format!("{kind}\0{mesh}\0").into_bytes();
        let mut start = prefix.clone();
        if let Some(a) = after {
            start.extend_from_slice(a.as_bytes());
            start.push(0); // strictly after `a`
        }
        // With an equality selector, walk the (smaller) label index instead of every resource.
        let eq = selector
            .iter()
            .find_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        let mut page = Page::default();
        let push = |r: Resource, page: &mut Page| -> bool {
            if !selector.iter().all(|(k, v)| match v {
                Some(v) => r.labels.get(k) == Some(v),
                None => r.labels.contains_key(k),
            }) {
                return true;
            }
            if page.items.len() == limit {
                page.next = page.items.last().map(|r| r.name.clone());
                return false;
            }
            page.items.push(r);
            true
        };
        if let Some((lk, lv)) = eq {
            let lprefix = format!("{kind}\0{mesh}\0{lk}={lv}\0").into_bytes();
            let mut lstart = lprefix.clone();
            if let Some(a) = after {
                lstart.extend_from_slice(a.as_bytes());
                lstart.push(0);
            }
            let it = self.db.iterator_cf(
                self.cf(CF_LABELS),
                IteratorMode::From(&lstart, Direction::Forward),
            );
            for item in it {
                let (k, _) = item?;
                if !k.starts_with(&lprefix) {
                    break;
                }
                let name = String::from_utf8_lossy(&k[lprefix.len()..]).into_owned();
                let key = ResourceKey {
                    kind: kind.to_string(),
                    mesh: mesh.to_string(),
                    name,
                };
                if let Some(r) = self.get(&key)?
                    && !push(r, &mut page)
                {
                    break;
                }
            }
        } else {
            let it = self.db.iterator_cf(
                self.cf(CF_RESOURCES),
                IteratorMode::From(&start, Direction::Forward),
            );
            for item in it {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let r: Resource = serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?;
                if !push(r, &mut page) {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Whether any mesh-scoped resource lives in `mesh`: one seek per mesh-scoped type.
    fn mesh_has_resources(&self, mesh: &str) -> Result<bool, StoreError> {
        let cf = self.cf(CF_RESOURCES);
        for t in causeway_api::types()
            .iter()
            // What the cluster allocated in the mesh goes with it.
            .filter(|t| {
                t.scope == causeway_api::Scope::Mesh && t.role != causeway_api::Role::Allocated
            })
        {
            let prefix = format!("{}\0{mesh}\0", t.kind).into_bytes();
            if let Some(item) = self
                .db
                .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
                .next()
            {
                let (k, _) = item?;
                if k.starts_with(&prefix) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The cluster's secrets, sealed. A store from a version that kept them in clear
    /// fails to decode here (see [`SealedSecrets`]).
    pub fn secrets(&self) -> Result<Option<SealedSecrets>, StoreError> {
        match self.db.get_cf(self.cf(CF_META), KEY_SECRETS)? {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt("cluster secrets", e))?,
            )),
            None => Ok(None),
        }
    }

    fn meta_prefix<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .meta_entries(prefix, what)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt(what, e))?,
            )),
            None => Ok(None),
        }
    }

    /// The zone tokens issued for `zone` and not revoked (their hashes, never the tokens).
    pub fn zone_tokens(&self, zone: &str) -> Result<Vec<ZoneTokenRecord>, StoreError> {
        self.meta_prefix(
            &prefixed(KEY_ZONE_TOKEN_PREFIX, &format!("{zone}\0")),
            "zone token",
        )
    }

    /// Every zone's tokens issued and not revoked.
    pub fn all_zone_tokens(&self) -> Result<Vec<ZoneTokenRecord>, StoreError> {
        self.meta_prefix(KEY_ZONE_TOKEN_PREFIX, "zone token")
    }

    pub fn zone_token(&self, zone: &str, id: &str) -> Result<Option<ZoneTokenRecord>, StoreError> {
        self.meta_get(
            &prefixed(KEY_ZONE_TOKEN_PREFIX, &format!("{zone}\0{id}")),
            "zone token",
        )
    }

    /// Every dataplane and ingress token issued (their claims, never the tokens).
    pub fn proxy_tokens(&self) -> Result<Vec<ProxyTokenRecord>, StoreError> {
        self.meta_prefix(KEY_PROXY_TOKEN_PREFIX, "proxy token")
    }

    /// The API token `id`: a stored record, or a bootstrap token's derived one (see
    /// [`crate::access`]).
    pub fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        match self.stored_api_token(id)? {
            Some(t) => Ok(Some(t)),
            None => self.bootstrap_api_token(id),
        }
    }

    /// The API token `id` as stored: `None` for a bootstrap token never rotated nor
    /// revoked (its record is derived, see [`Store::api_token`]).
    pub fn stored_api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        self.meta_get(&prefixed(KEY_API_TOKEN_PREFIX, id), "API token")
    }

    fn bootstrap_api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        let Some(secrets) = self.secrets()? else {
            return Ok(None);
        };
        Ok(match id {
            BOOTSTRAP_ADMIN_ID => Some(ApiTokenRecord::bootstrap(id, &secrets.tokens.admin_sha256)),
            BOOTSTRAP_READONLY_ID => Some(ApiTokenRecord::bootstrap(
                id,
                &secrets.tokens.readonly_sha256,
            )),
            _ => None,
        })
    }

    /// Every API token the cluster knows, live or not, the bootstrap ones first.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut all: Vec<ApiTokenRecord> = self.meta_prefix(KEY_API_TOKEN_PREFIX, "API token")?;
        for id in [BOOTSTRAP_READONLY_ID, BOOTSTRAP_ADMIN_ID] {
            if !all.iter().any(|t| t.id == id)
                && let Some(t) = self.bootstrap_api_token(id)?
            {
                all.insert(0, t);
            }
        }
        all.sort_by_key(|t| (t.created_unix, t.id != BOOTSTRAP_ADMIN_ID));
        Ok(all)
    }

    /// The newest `limit` audit entries that `keep` accepts, oldest first.
    pub fn audit_entries(
        &self,
        limit: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut end = KEY_AUDIT_PREFIX.to_vec();
        end.push(0xff);
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(&end, Direction::Reverse),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(KEY_AUDIT_PREFIX) || out.len() >= limit {
                break;
            }
            let e: AuditEntry =
                serde_json::from_slice(&v).map_err(|e| corrupt("audit entry", e))?;
            if keep(&e) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The revoked dataplane and ingress tokens that zones must still refuse, each with
    /// until when (`causeway_pki::dataplane_token::refused_until`: past its expiry while
    /// zones may hold renewals of it).
    pub fn revoked_proxy_tokens(
        &self,
        now_unix: i64,
    ) -> Result<Vec<(ProxyTokenRecord, i64)>, StoreError> {
        let all: Vec<ProxyTokenRecord> =
            self.meta_prefix(KEY_REVOKED_PROXY_TOKEN_PREFIX, "revoked proxy token")?;
        Ok(all
            .into_iter()
            .map(|t| {
                let until = causeway_pki::dataplane_token::refused_until(
                    t.expires_unix,
                    t.revoked_unix.unwrap_or(t.expires_unix),
                );
                (t, until)
            })
            .filter(|(_, until)| *until > now_unix)
            .collect())
    }

    /// The join tokens issued for node `node`, oldest first.
    pub fn join_tokens_of(&self, node: u64) -> Result<Vec<JoinTokenRecord>, StoreError> {
        let mut all: Vec<JoinTokenRecord> =
            self.meta_prefix(KEY_JOIN_TOKEN_PREFIX, "join token")?;
        all.retain(|t| t.node == node);
        all.sort_by_key(|t| t.created_unix);
        Ok(all)
    }

    /// A join token's record, by the token's hash.
    pub fn join_token(&self, sha256: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.meta_get(&prefixed(KEY_JOIN_TOKEN_PREFIX, sha256), "join token")
    }

    /// What the KDS sessions last reported about each zone.
    pub fn zone_statuses(&self) -> Result<Vec<ZoneStatusRecord>, StoreError> {
        self.meta_prefix(KEY_ZONE_STATUS_PREFIX, "zone status")
    }

    pub fn zone_status(&self, zone: &str) -> Result<Option<ZoneStatusRecord>, StoreError> {
        self.meta_get(&prefixed(KEY_ZONE_STATUS_PREFIX, zone), "zone status")
    }

    /// Visits every sealed value of the state machine (the cluster's secrets, each
    /// mesh's root CA keys, a staged root's too, and mesh secrets) with its name; a value
    /// `f` returns replaces it, all in one synced batch (a seal key rotation seals each
    /// again). Not for use while entries are applied: a node calls it before its Raft
    /// loop starts. Returns how many values were replaced.
    pub fn map_sealed<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&str, &str) -> Result<Option<String>, E>,
    ) -> Result<usize, E> {
        let meta = self.cf(CF_META);
        let mut batch = WriteBatch::default();
        let mut replaced = 0;
        let mut visit = |what: &str, v: &mut String| -> Result<bool, E> {
            Ok(match f(what, v)? {
                Some(new) => {
                    *v = new;
                    replaced += 1;
                    true
                }
                None => false,
            })
        };
        if let Some(mut s) = self.secrets()? {
            let mut changed = false;
            for (what, v) in s.sealed_mut() {
                changed |= visit(what, v)?;
            }
            if changed {
                batch.put_cf(meta, KEY_SECRETS, serde_json::to_vec(&s).expect("encodes"));
            }
        }
        for (key, mut ca) in self.meta_entries::<MeshCa>(KEY_MESH_CA_PREFIX, "mesh CA")? {
            let what = format!(
                "the root CA key of mesh {}",
                String::from_utf8_lossy(&key[KEY_MESH_CA_PREFIX.len()..])
            );
            let mut changed = false;
            for v in ca.sealed_mut() {
                changed |= visit(&what, v)?;
            }
            if changed {
                batch.put_cf(meta, &key, serde_json::to_vec(&ca).expect("encodes"));
            }
        }
        let mut signing = self.token_signing_keys()?;
        let mut changed = false;
        for k in &mut signing {
            changed |= visit(&format!("token-signing key {}", k.id), &mut k.key_sealed)?;
        }
        if changed {
            batch.put_cf(
                meta,
                KEY_TOKEN_SIGNING_KEYS,
                serde_json::to_vec(&signing).expect("encodes"),
            );
        }
        for (key, mut v) in self.meta_entries::<String>(KEY_SECRET_PREFIX, "secret")? {
            let name = String::from_utf8_lossy(&key[KEY_SECRET_PREFIX.len()..]).replace('\0', "/");
            if visit(&format!("secret {name}"), &mut v)? {
                batch.put_cf(meta, &key, serde_json::to_vec(&v).expect("encodes"));
            }
        }
        if replaced > 0 {
            self.db
                .write_opt(batch, &sync_opts())
                .map_err(StoreError::from)?;
        }
        Ok(replaced)
    }

    /// Leaves no trace of what was overwritten or dropped: the log up to the applied
    /// index goes (a follower behind gets a snapshot), and RocksDB flushes its memtables
    /// (its write-ahead log goes with them) and rewrites every file. After a seal key
    /// rotation, nothing sealed under the old key is left in the data dir.
    pub fn purge_history(&self) -> Result<(), StoreError> {
        self.compact(self.applied_index()?)?;
        causeway_disk::purge_rocksdb_history(&self.db, &COLUMN_FAMILIES)?;
        Ok(())
    }

    /// The entries of the meta column family under `prefix`, with their keys.
    fn meta_entries<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((
                k.to_vec(),
                serde_json::from_slice(&v).map_err(|e| corrupt(what, e))?,
            ));
        }
        Ok(out)
    }

    /// The token-signing keys after a rotation; empty while the cluster's first key
    /// (in its secrets) signs.
    pub fn token_signing_keys(
        &self,
    ) -> Result<Vec<crate::token_keys::TokenSigningKey>, StoreError> {
        Ok(self
            .meta_get(KEY_TOKEN_SIGNING_KEYS, "token signing keys")?
            .unwrap_or_default())
    }

    /// A mesh secret's stored value (sealed).
    pub fn secret(&self, mesh: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.meta_get(
            &prefixed(KEY_SECRET_PREFIX, &format!("{mesh}\0{name}")),
            "secret",
        )
    }

    /// The names of a mesh's secrets (never their values).
    pub fn secret_names(&self, mesh: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefixed(KEY_SECRET_PREFIX, &format!("{mesh}\0"));
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in it {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Every intermediate CA issued to zones (revoked ones included).
    pub fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StoreError> {
        self.meta_prefix(KEY_INTERMEDIATE_PREFIX, "intermediate")
    }

    /// The root CA of `mesh`, if one was generated.
    pub fn mesh_ca(&self, mesh: &str) -> Result<Option<MeshCa>, StoreError> {
        self.meta_get(&prefixed(KEY_MESH_CA_PREFIX, mesh), "mesh CA")
    }

    /// Every resource a zone reported (origin = `zone`). A full scan; KDS calls it once
    /// per zone connection.
    pub fn resources_of_origin(&self, zone: &str) -> Result<Vec<Resource>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RESOURCES), IteratorMode::Start)
        {
            let (_, v) = item?;
            let r: Resource = serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?;
            if r.origin.as_deref() == Some(zone) {
                out.push(r);
            }
        }
        Ok(out)
    }

    // === Changelog (KDS deltas) ===

    fn changes_floor(&self) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(CF_RAFT), KEY_CHANGES_FLOOR)? {
            Some(b) => u64_from(&b),
            None => Ok(0),
        }
    }

    /// The index of the newest resource change; cheap, for deciding whether to look.
    pub fn last_change_index(&self) -> u64 {
        self.last_change.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The changes after `since` that `include(kind, origin)` selects, read from one
    /// consistent RocksDB snapshot. A full snapshot when `since` is 0 or older than the
    /// changelog keeps. A resource changed several times appears once, as its latest state.
    pub fn changes_since(
        &self,
        since: u64,
        include: &dyn Fn(&str, &str) -> bool,
    ) -> Result<SyncSet, StoreError> {
        #[derive(serde::Deserialize)]
        struct OriginOnly {
            #[serde(rename = "type")]
            kind: String,
            origin: Option<String>,
        }
        let snap = self.db.snapshot();
        let revision = match snap.get_cf(self.cf(CF_META), KEY_APPLIED)? {
            Some(b) => u64_from(&b)?,
            None => 0,
        };
        let floor = match snap.get_cf(self.cf(CF_RAFT), KEY_CHANGES_FLOOR)? {
            Some(b) => u64_from(&b)?,
            None => 0,
        };
        let mut set = SyncSet {
            revision,
            ..SyncSet::default()
        };
        if since == 0 || since < floor {
            set.full = true;
            for item in snap.iterator_cf(self.cf(CF_RESOURCES), IteratorMode::Start) {
                let (_, v) = item?;
                let o: OriginOnly =
                    serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?;
                if include(&o.kind, o.origin.as_deref().unwrap_or("global")) {
                    set.upserts.push(v.to_vec());
                }
            }
            return Ok(set);
        }
        if since >= revision {
            return Ok(set);
        }
        // Latest change per key, in index order.
        let mut latest: HashMap<Vec<u8>, (bool, String)> = HashMap::new();
        let start = u64_key(since + 1);
        for item in snap.iterator_cf(
            self.cf(CF_CHANGES),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if u64_from(&k[..8])? > revision {
                break;
            }
            let deleted = v.first() == Some(&1);
            let origin = String::from_utf8_lossy(&v[1..]).into_owned();
            latest.insert(k[8..].to_vec(), (deleted, origin));
        }
        let mut keys: Vec<_> = latest.into_iter().collect();
        keys.sort();
        for (kb, (deleted, origin)) in keys {
            let key = parse_resource_key(&kb)?;
            if !include(&key.kind, &origin) {
                continue;
            }
            if deleted {
                set.tombstones.push(key);
            } else if let Some(v) = snap.get_cf(self.cf(CF_RESOURCES), &kb)? {
                set.upserts.push(v);
            }
        }
        Ok(set)
    }

    /// Drops changelog entries up to `index`; zones older than that get full snapshots.
    pub fn prune_changes(&self, index: u64) -> Result<(), StoreError> {
        if index <= self.changes_floor()? {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_CHANGES), u64_key(0), u64_key(index + 1));
        batch.put_cf(self.cf(CF_RAFT), KEY_CHANGES_FLOOR, u64_key(index));
        self.db.write(batch)?;
        Ok(())
    }

    pub fn members(&self) -> Result<BTreeMap<u64, Member>, StoreError> {
        Ok(self
            .meta_prefix::<Member>(KEY_MEMBER_PREFIX, "member")?
            .into_iter()
            .map(|m| (m.id, m))
            .collect())
    }
}

/// State machine changes of one Ready, written in one RocksDB batch. Reads see the
/// batch's own earlier writes, so several commands in a batch apply as if one by one.
pub struct ApplyBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Resource>>,
    /// Join tokens written in this batch (a token used twice in one batch is used once).
    join_tokens: HashMap<String, JoinTokenRecord>,
    /// Meta records written in this batch, so a later entry of the batch reads them (a
    /// token issued and used, or used twice, in one batch).
    meta_overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    applied: Option<u64>,
    conf_state: Option<ConfState>,
    /// Whether a resource changed (so KDS sessions should look).
    changed: bool,
}

impl ApplyBatch<'_> {
    fn current(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        match self.overlay.get(&resource_key_bytes(key)) {
            Some(r) => Ok(r.clone()),
            None => self.store.get(key),
        }
    }

    fn mesh_exists(&self, mesh: &str) -> Result<bool, StoreError> {
        let key = ResourceKey {
            kind: "Mesh".into(),
            mesh: String::new(),
            name: mesh.into(),
        };
        Ok(self.current(&key)?.is_some())
    }

    fn write(&mut self, key: &ResourceKey, old: Option<&Resource>, new: Option<Resource>) {
        let kb = resource_key_bytes(key);
        let index = self.applied.expect("apply() sets the index before writing");
        let origin = new
            .as_ref()
            .or(old)
            .and_then(|r| r.origin.as_deref())
            .unwrap_or("global");
        let mut ck = u64_key(index).to_vec();
        ck.extend_from_slice(&kb);
        self.batch.put_cf(
            self.store.cf(CF_CHANGES),
            ck,
            change_value(new.is_none(), origin),
        );
        self.changed = true;
        let labels = self.store.cf(CF_LABELS);
        if let Some(old) = old {
            for (k, v) in &old.labels {
                self.batch.delete_cf(labels, label_key_bytes(key, k, v));
            }
        }
        match &new {
            Some(r) => {
                for (k, v) in &r.labels {
                    self.batch.put_cf(labels, label_key_bytes(key, k, v), b"");
                }
                let json = serde_json::to_vec(r).expect("resources serialize");
                self.batch.put_cf(self.store.cf(CF_RESOURCES), &kb, json);
            }
            None => self.batch.delete_cf(self.store.cf(CF_RESOURCES), &kb),
        }
        self.overlay.insert(kb, new);
    }

    /// Applies one command committed at `index` at wall-clock time `now` (taken from the
    /// entry, so every node stores the same timestamps).
    pub fn apply(
        &mut self,
        index: u64,
        now: time::OffsetDateTime,
        cmd: Command,
    ) -> Result<Result<WriteOutcome, ApplyError>, StoreError> {
        self.applied = Some(index);
        Ok(match cmd {
            Command::Put {
                resource,
                expected_version,
            } => {
                let mut r = *resource;
                let key = r.key();
                let old = self.current(&key)?;
                let found = old.as_ref().and_then(|o| o.version).unwrap_or(0);
                if let Some(expected) = expected_version
                    && expected != found
                {
                    return Ok(Err(ApplyError::Conflict { expected, found }));
                }
                if !key.mesh.is_empty() && !self.mesh_exists(&key.mesh)? {
                    return Ok(Err(ApplyError::MeshMissing(key.mesh)));
                }
                if let Some(origin) = old.as_ref().and_then(|o| o.origin.clone())
                    && origin != "global"
                {
                    return Ok(Err(ApplyError::OwnedElsewhere {
                        key: key.to_string(),
                        origin: format!("zone {origin:?}"),
                    }));
                }
                r.version = Some(index);
                r.creation_time = Some(old.as_ref().and_then(|o| o.creation_time).unwrap_or(now));
                r.modification_time = Some(now);
                r.origin.get_or_insert_with(|| "global".to_string());
                let created = old.is_none();
                let services: std::collections::BTreeSet<virtual_ips::Pinned> =
                    virtual_ips::services_of(&r, None).into_iter().collect();
                self.write(&key, old.as_ref(), Some(r));
                if key.kind == "Mesh" {
                    self.allocate_for_mesh(&key.name, now)?;
                } else if !services.is_empty() {
                    self.allocate_virtual_ips(&key.mesh, services, now)?;
                }
                Ok(WriteOutcome::Written {
                    version: index,
                    created,
                })
            }
            Command::Delete {
                key,
                expected_version,
            } => {
                let Some(old) = self.current(&key)? else {
                    return Ok(Err(ApplyError::NotFound));
                };
                let found = old.version.unwrap_or(0);
                if let Some(expected) = expected_version
                    && expected != found
                {
                    return Ok(Err(ApplyError::Conflict { expected, found }));
                }
                if key.kind == "Mesh" && self.store.mesh_has_resources(&key.name)? {
                    return Ok(Err(ApplyError::MeshNotEmpty(key.name)));
                }
                if let Some(origin) = old.origin.clone()
                    && origin != "global"
                {
                    return Ok(Err(ApplyError::OwnedElsewhere {
                        key: key.to_string(),
                        origin: format!("zone {origin:?}"),
                    }));
                }
                if key.kind == "Mesh" {
                    self.batch.delete_cf(
                        self.store.cf(CF_META),
                        prefixed(KEY_MESH_CA_PREFIX, &key.name),
                    );
                    self.delete_virtual_ips(&key.name)?;
                }
                self.write(&key, Some(&old), None);
                Ok(WriteOutcome::Deleted)
            }
            Command::InitCluster(secrets) => {
                // Only the first one counts: two leaders racing at formation may both propose.
                if self.store.secrets()?.is_none() {
                    self.batch.put_cf(
                        self.store.cf(CF_META),
                        KEY_SECRETS,
                        serde_json::to_vec(&secrets).expect("encodes"),
                    );
                }
                Ok(WriteOutcome::Done)
            }
            Command::RegisterMember(m) => {
                self.put_member(&m);
                Ok(WriteOutcome::Done)
            }
            Command::AddZoneToken(t) => {
                self.put_meta(
                    prefixed(KEY_ZONE_TOKEN_PREFIX, &format!("{}\0{}", t.zone, t.id)),
                    &t,
                );
                Ok(WriteOutcome::Done)
            }
            Command::UseZoneToken {
                zone,
                id,
                sha256,
                key_sha256,
            } => {
                let key = prefixed(KEY_ZONE_TOKEN_PREFIX, &format!("{zone}\0{id}"));
                let known: Option<ZoneTokenRecord> = self.get_meta(&key, "zone token")?;
                let Some(mut t) = known.filter(|t| t.sha256 == sha256) else {
                    return Ok(Err(ApplyError::Token(format!(
                        "the token {id} of zone {zone:?} was revoked (or never issued here); \
                         create a new one with `causeway zone token create --zone {zone}`"
                    ))));
                };
                match &t.enrolled_key_sha256 {
                    // The same key again: the zone retries after losing the answer.
                    Some(k) if *k == key_sha256 => return Ok(Ok(WriteOutcome::Done)),
                    Some(_) => {
                        return Ok(Err(ApplyError::Token(format!(
                            "the token {id} of zone {zone:?} was already used to enroll (zone \
                             tokens are single use); create a new one with `causeway zone token \
                             create --zone {zone}`"
                        ))));
                    }
                    None => {}
                }
                if now.unix_timestamp() >= t.expires_unix {
                    return Ok(Err(ApplyError::Token(format!(
                        "the token {id} of zone {zone:?} expired at {} (Unix seconds); create \
                         a new one with `causeway zone token create --zone {zone}`",
                        t.expires_unix
                    ))));
                }
                t.enrolled_key_sha256 = Some(key_sha256);
                t.enrolled_unix = Some(now.unix_timestamp());
                self.put_meta(key, &t);
                Ok(WriteOutcome::Done)
            }
            Command::AddJoinToken(t) => {
                self.retire_join_tokens(t.node, None)?;
                self.put_meta(prefixed(KEY_JOIN_TOKEN_PREFIX, &t.sha256), &t);
                self.join_tokens.insert(t.sha256.clone(), t);
                Ok(WriteOutcome::Done)
            }
            Command::CancelJoinTokens { node } => {
                self.retire_join_tokens(node, None)?;
                Ok(WriteOutcome::Done)
            }
            Command::UseJoinToken { sha256 } => {
                let known = match self.join_tokens.get(&sha256) {
                    Some(t) => Some(t.clone()),
                    None => self.store.join_token(&sha256)?,
                };
                let Some(mut t) = known else {
                    return Ok(Err(ApplyError::Token(
                        "unknown join token (not issued by this cluster, or altered)".into(),
                    )));
                };
                if t.used {
                    return Ok(Err(ApplyError::Token(format!(
                        "the join token was already used (tokens are single use); issue a new one with `causeway cluster join-token --id {}`",
                        t.node
                    ))));
                }
                if now.unix_timestamp() >= t.expires_unix {
                    return Ok(Err(ApplyError::Token(format!(
                        "the join token expired at {} (Unix seconds); issue a new one with `causeway cluster join-token --id {}`",
                        t.expires_unix, t.node
                    ))));
                }
                t.used = true;
                self.put_meta(prefixed(KEY_JOIN_TOKEN_PREFIX, &sha256), &t);
                let node = t.node;
                self.join_tokens.insert(sha256.clone(), t);
                self.retire_join_tokens(node, Some(&sha256))?;
                Ok(WriteOutcome::Done)
            }
            Command::SetTokenSigningKeys {
                keys,
                expected_current,
            } => {
                let stored: Vec<crate::token_keys::TokenSigningKey> = self
                    .get_meta(KEY_TOKEN_SIGNING_KEYS, "token signing keys")?
                    .unwrap_or_default();
                let current = crate::token_keys::current(&stored).map(|k| k.id.clone());
                if current != expected_current {
                    return Ok(Err(ApplyError::Refused(
                        "the token-signing key was rotated meanwhile; look again and retry".into(),
                    )));
                }
                self.put_meta(KEY_TOKEN_SIGNING_KEYS.to_vec(), &keys);
                Ok(WriteOutcome::Done)
            }
            Command::SetZoneTokenKey { key_sealed } => {
                let Some(mut secrets) =
                    self.get_meta::<SealedSecrets>(KEY_SECRETS, "cluster secrets")?
                else {
                    return Ok(Err(ApplyError::Refused(
                        "the cluster is not formed yet".into(),
                    )));
                };
                secrets.zone_token_key_sealed = key_sealed;
                self.put_meta(KEY_SECRETS.to_vec(), &secrets);
                Ok(WriteOutcome::Done)
            }
            Command::RotateZoneCa {
                expected_current_sha256,
                step,
            } => self.apply_ca_step(|s| {
                crate::cluster_ca::apply_zone_ca(s, &expected_current_sha256, step)
            })?,
            Command::RotateRaftCa {
                expected_current_sha256,
                step,
            } => self.apply_ca_step(|s| {
                crate::cluster_ca::apply_raft_ca(s, &expected_current_sha256, step)
            })?,
            Command::RotateApiCa {
                expected_current_sha256,
                step,
            } => self.apply_ca_step(|s| {
                crate::cluster_ca::apply_api_ca(s, &expected_current_sha256, step)
            })?,
            Command::AddProxyToken(t) => {
                self.put_meta(prefixed(KEY_PROXY_TOKEN_PREFIX, &t.id), &t);
                Ok(WriteOutcome::Done)
            }
            Command::RevokeProxyTokens { ids } => {
                let mut found = false;
                for id in ids {
                    let key = prefixed(KEY_PROXY_TOKEN_PREFIX, &id);
                    let Some(mut t) = self.get_meta::<ProxyTokenRecord>(&key, "proxy token")?
                    else {
                        continue;
                    };
                    found = true;
                    if t.revoked_unix.is_none() {
                        t.revoked_unix = Some(now.unix_timestamp());
                        self.put_meta(key, &t);
                        self.put_meta(prefixed(KEY_REVOKED_PROXY_TOKEN_PREFIX, &id), &t);
                    }
                }
                if !found {
                    return Ok(Err(ApplyError::NotFound));
                }
                // An expired token needs no revocation any more: the list zones get stays
                // as short as the tokens still alive.
                let expired: Vec<String> = self
                    .store
                    .meta_prefix::<ProxyTokenRecord>(
                        KEY_REVOKED_PROXY_TOKEN_PREFIX,
                        "revoked proxy token",
                    )?
                    .into_iter()
                    .filter(|t| t.expires_unix <= now.unix_timestamp())
                    .map(|t| t.id)
                    .collect();
                for id in expired {
                    self.delete_meta(prefixed(KEY_REVOKED_PROXY_TOKEN_PREFIX, &id));
                }
                Ok(WriteOutcome::Done)
            }
            Command::AddApiToken(t) => {
                self.put_meta(prefixed(KEY_API_TOKEN_PREFIX, &t.id), &t);
                Ok(WriteOutcome::Done)
            }
            Command::RotateApiToken {
                id,
                new,
                overlap_secs,
            } => {
                let Some(mut old) = self.api_token_seen(&id)? else {
                    return Ok(Err(ApplyError::NotFound));
                };
                if let Some(why) = old.refusal(now.unix_timestamp()) {
                    return Ok(Err(ApplyError::Refused(format!(
                        "{why}: only a live token is rotated; issue a new one with `causeway token create`"
                    ))));
                }
                let overlap = i64::try_from(overlap_secs).unwrap_or(NEVER);
                old.expires_unix = old
                    .expires_unix
                    .min(now.unix_timestamp().saturating_add(overlap));
                self.put_meta(prefixed(KEY_API_TOKEN_PREFIX, &old.id), &old);
                self.put_meta(prefixed(KEY_API_TOKEN_PREFIX, &new.id), &new);
                Ok(WriteOutcome::Done)
            }
            Command::RevokeApiToken { id } => {
                let Some(mut t) = self.api_token_seen(&id)? else {
                    return Ok(Err(ApplyError::NotFound));
                };
                let now_unix = now.unix_timestamp();
                if t.revoked_unix.is_some() {
                    return Ok(Ok(WriteOutcome::Done));
                }
                let other_admin = self.api_tokens_seen()?.iter().any(|o| {
                    o.id != id && o.role == crate::access::ApiRole::Admin && o.live(now_unix)
                });
                if t.role == crate::access::ApiRole::Admin && t.live(now_unix) && !other_admin {
                    return Ok(Err(ApplyError::Refused(format!(
                        "{id} is the last live admin token: revoking it would leave nobody able to manage the cluster; create another admin token first (`causeway token create --role admin`)"
                    ))));
                }
                t.revoked_unix = Some(now_unix);
                self.put_meta(prefixed(KEY_API_TOKEN_PREFIX, &id), &t);
                Ok(WriteOutcome::Done)
            }
            Command::RevokeZoneTokens { zone, id } => {
                let ids: Vec<String> = match id {
                    Some(id) => {
                        if self.store.zone_token(&zone, &id)?.is_none() {
                            return Ok(Err(ApplyError::NotFound));
                        }
                        vec![id]
                    }
                    None => self
                        .store
                        .zone_tokens(&zone)?
                        .into_iter()
                        .map(|t| t.id)
                        .collect(),
                };
                let left = self
                    .store
                    .zone_tokens(&zone)?
                    .into_iter()
                    .filter(|t| !ids.contains(&t.id))
                    .count();
                for id in ids {
                    self.delete_meta(prefixed(KEY_ZONE_TOKEN_PREFIX, &format!("{zone}\0{id}")));
                }
                // A zone left without a token is out: what it reported (its ingresses,
                // dataplanes, drill reports, zone-origin policies) leaves every other zone.
                if left == 0 {
                    for r in self.store.resources_of_origin(&zone)? {
                        let key = r.key();
                        if let Some(old) = self.current(&key)? {
                            self.write(&key, Some(&old), None);
                        }
                    }
                }
                Ok(WriteOutcome::Done)
            }
            Command::ZoneStatus(st) => {
                let newer = match self.store.zone_status(&st.zone)? {
                    Some(cur) => {
                        cur.session == st.session || st.connected_unix_ms >= cur.connected_unix_ms
                    }
                    None => true,
                };
                if newer {
                    self.put_meta(prefixed(KEY_ZONE_STATUS_PREFIX, &st.zone), &*st);
                }
                Ok(WriteOutcome::Done)
            }
            Command::SetMeshCa { mesh, ca, replace } => {
                if (replace || self.store.mesh_ca(&mesh)?.is_none()) && self.mesh_exists(&mesh)? {
                    self.put_meta(prefixed(KEY_MESH_CA_PREFIX, &mesh), &ca);
                }
                Ok(WriteOutcome::Done)
            }
            Command::RotateMeshCa { mesh, step } => {
                let Some(ca) = self.store.mesh_ca(&mesh)? else {
                    return Ok(Err(ApplyError::Refused(format!(
                        "mesh {mesh:?} has no CA to rotate (mTLS is off)"
                    ))));
                };
                match crate::ca_rotation::apply(&ca, &step) {
                    Ok(next) => {
                        self.put_meta(prefixed(KEY_MESH_CA_PREFIX, &mesh), &next);
                        Ok(WriteOutcome::Done)
                    }
                    Err(why) => return Ok(Err(ApplyError::Refused(why))),
                }
            }
            Command::PutSecret { mesh, name, value } => {
                if !self.mesh_exists(&mesh)? {
                    return Ok(Err(ApplyError::MeshMissing(mesh)));
                }
                self.put_meta(
                    prefixed(KEY_SECRET_PREFIX, &format!("{mesh}\0{name}")),
                    &value,
                );
                Ok(WriteOutcome::Done)
            }
            Command::DeleteSecret { mesh, name } => {
                let k = prefixed(KEY_SECRET_PREFIX, &format!("{mesh}\0{name}"));
                if self.store.db.get_cf(self.store.cf(CF_META), &k)?.is_none() {
                    return Ok(Err(ApplyError::NotFound));
                }
                self.batch.delete_cf(self.store.cf(CF_META), k);
                Ok(WriteOutcome::Done)
            }
            Command::RecordIntermediate(r) => {
                let k = prefixed(
                    KEY_INTERMEDIATE_PREFIX,
                    &format!("{}\0{}\0{}", r.mesh, r.zone, r.sha256),
                );
                self.put_meta(k, &r);
                Ok(WriteOutcome::Done)
            }
            Command::RevokeIntermediates { zone } => {
                for mut r in self.store.intermediates()? {
                    if r.zone == zone && !r.revoked {
                        r.revoked = true;
                        let k = prefixed(
                            KEY_INTERMEDIATE_PREFIX,
                            &format!("{}\0{}\0{}", r.mesh, r.zone, r.sha256),
                        );
                        self.put_meta(k, &r);
                    }
                }
                Ok(WriteOutcome::Done)
            }
            Command::ZoneSync {
                zone,
                upserts,
                deletes,
            } => {
                let mut refused = Vec::new();
                // A zone revoked for good (no token left) reports nothing any more, even
                // a change set already on its way when it was revoked.
                if self.store.zone_tokens(&zone)?.is_empty() {
                    let why = format!("zone {zone:?} has no token left (revoked)");
                    refused.extend(upserts.iter().map(|r| (r.key(), why.clone())));
                    return Ok(Ok(WriteOutcome::ZoneSynced { refused }));
                }
                for key in deletes {
                    match self.current(&key)? {
                        Some(old) if old.origin.as_deref() == Some(zone.as_str()) => {
                            self.write(&key, Some(&old), None);
                        }
                        _ => {}
                    }
                }
                // The services of the Dataplanes written, by mesh: each needs a virtual IP.
                let mut services: BTreeMap<
                    String,
                    std::collections::BTreeSet<virtual_ips::Pinned>,
                > = BTreeMap::new();
                for mut r in upserts {
                    let key = r.key();
                    // A zone speaks for itself only: an ingress (or a drill report) that
                    // names another zone would draw that zone's traffic.
                    if let Some(claimed) = r.spec.get("zone").and_then(|z| z.as_str())
                        && claimed != zone
                    {
                        refused.push((
                            key,
                            format!("it says zone {claimed:?}; it comes from zone {zone:?}"),
                        ));
                        continue;
                    }
                    let old = self.current(&key)?;
                    if let Some(o) = &old
                        && o.origin.as_deref() != Some(zone.as_str())
                    {
                        let owner = o.origin.as_deref().unwrap_or("global");
                        refused.push((key, format!("the name is taken by a resource of {owner}")));
                        continue;
                    }
                    if !key.mesh.is_empty() && !self.mesh_exists(&key.mesh)? {
                        refused.push((key.clone(), format!("mesh {:?} does not exist", key.mesh)));
                        continue;
                    }
                    r.version = Some(index);
                    r.creation_time =
                        Some(old.as_ref().and_then(|o| o.creation_time).unwrap_or(now));
                    r.modification_time = Some(now);
                    r.origin = Some(zone.clone());
                    services
                        .entry(key.mesh.clone())
                        .or_default()
                        .extend(virtual_ips::services_of(&r, Some(&zone)));
                    self.write(&key, old.as_ref(), Some(r));
                }
                for (mesh, services) in services {
                    self.allocate_virtual_ips(&mesh, services, now)?;
                }
                Ok(WriteOutcome::ZoneSynced { refused })
            }
        })
    }

    /// Marks every join token of `node` used, but `except`.
    fn retire_join_tokens(&mut self, node: u64, except: Option<&str>) -> Result<(), StoreError> {
        let mut all: HashMap<String, JoinTokenRecord> = self
            .store
            .join_tokens_of(node)?
            .into_iter()
            .map(|t| (t.sha256.clone(), t))
            .collect();
        for (sha, t) in &self.join_tokens {
            if t.node == node {
                all.insert(sha.clone(), t.clone());
            }
        }
        for (sha, mut t) in all {
            if t.used || except == Some(sha.as_str()) {
                continue;
            }
            t.used = true;
            self.put_meta(prefixed(KEY_JOIN_TOKEN_PREFIX, &sha), &t);
            self.join_tokens.insert(sha, t);
        }
        Ok(())
    }

    /// A step of a CA rotation applied to the cluster's secrets ([`crate::cluster_ca`]).
    fn apply_ca_step(
        &mut self,
        step: impl FnOnce(&mut SealedSecrets) -> Result<(), String>,
    ) -> Result<Result<WriteOutcome, ApplyError>, StoreError> {
        let Some(mut secrets) = self.get_meta::<SealedSecrets>(KEY_SECRETS, "cluster secrets")?
        else {
            return Ok(Err(ApplyError::Refused(
                "the cluster is not formed yet".into(),
            )));
        };
        if let Err(why) = step(&mut secrets) {
            return Ok(Err(ApplyError::Refused(why)));
        }
        self.put_meta(KEY_SECRETS.to_vec(), &secrets);
        Ok(Ok(WriteOutcome::Done))
    }

    fn put_meta<T: serde::Serialize>(&mut self, key: Vec<u8>, value: &T) {
        let bytes = serde_json::to_vec(value).expect("encodes");
        self.batch.put_cf(self.store.cf(CF_META), &key, &bytes);
        self.meta_overlay.insert(key, Some(bytes));
    }

    fn delete_meta(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(self.store.cf(CF_META), &key);
        self.meta_overlay.insert(key, None);
    }

    /// A meta record as this batch sees it: its own writes first, then the store.
    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.meta_overlay.get(key) {
            Some(Some(b)) => Ok(Some(
                serde_json::from_slice(b).map_err(|e| corrupt(what, e))?,
            )),
            Some(None) => Ok(None),
            None => self.store.meta_get(key, what),
        }
    }

    pub fn put_member(&mut self, m: &Member) {
        let mut k = KEY_MEMBER_PREFIX.to_vec();
        k.extend_from_slice(&u64_key(m.id));
        self.batch.put_cf(
            self.store.cf(CF_META),
            k,
            serde_json::to_vec(m).expect("encodes"),
        );
    }

    pub fn remove_member(&mut self, id: u64) {
        let mut k = KEY_MEMBER_PREFIX.to_vec();
        k.extend_from_slice(&u64_key(id));
        self.batch.delete_cf(self.store.cf(CF_META), k);
    }

    /// Records a new membership (after a conf change) with the applied index.
    pub fn set_conf_state(&mut self, index: u64, cs: &ConfState) {
        self.applied = Some(index);
        let b = cs.write_to_bytes().expect("conf state encodes");
        self.batch
            .put_cf(self.store.cf(CF_META), KEY_CONF_STATE, &b);
        self.batch
            .put_cf(self.store.cf(CF_RAFT), KEY_CONF_STATE, &b);
        self.conf_state = Some(cs.clone());
    }

    /// Marks an entry without a state change (a leader's empty entry) as applied.
    /// An API token as this batch sees it.
    fn api_token_seen(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        match self.get_meta(&prefixed(KEY_API_TOKEN_PREFIX, id), "API token")? {
            Some(t) => Ok(Some(t)),
            None => self.store.bootstrap_api_token(id),
        }
    }

    /// Every API token as this batch sees it.
    fn api_tokens_seen(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut all = self.store.api_tokens()?;
        all.retain(|t| {
            !self
                .meta_overlay
                .contains_key(&prefixed(KEY_API_TOKEN_PREFIX, &t.id))
        });
        for (k, v) in &self.meta_overlay {
            if k.starts_with(KEY_API_TOKEN_PREFIX)
                && let Some(b) = v
            {
                all.push(serde_json::from_slice(b).map_err(|e| corrupt("API token", e))?);
            }
        }
        Ok(all)
    }

    /// Records in the audit log that `actor` asked for the change at `index` (see
    /// [`crate::audit`]), and drops the entry that falls out of the log.
    pub fn audit(
        &mut self,
        index: u64,
        at_unix_ms: i64,
        actor: crate::audit::Actor,
        action: String,
        target: String,
        outcome: &Result<WriteOutcome, ApplyError>,
    ) -> Result<(), StoreError> {
        let last: Option<u64> = self.get_meta(KEY_AUDIT_SEQ, "audit sequence")?;
        let seq = last.unwrap_or(0) + 1;
        let entry = AuditEntry {
            seq,
            index,
            at_unix_ms,
            actor,
            action,
            target,
            outcome: match outcome {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        };
        self.put_meta(audit_key(seq), &entry);
        self.put_meta(KEY_AUDIT_SEQ.to_vec(), &seq);
        if seq > crate::audit::RETAINED {
            self.delete_meta(audit_key(seq - crate::audit::RETAINED));
        }
        Ok(())
    }

    pub fn skip(&mut self, index: u64) {
        self.applied = Some(index);
    }

    /// Writes the batch and the new applied index.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if let Some(i) = self.applied {
            self.batch
                .put_cf(self.store.cf(CF_META), KEY_APPLIED, u64_key(i));
        }
        self.store.db.write(self.batch)?;
        if self.changed
            && let Some(i) = self.applied
        {
            self.store
                .last_change
                .fetch_max(i, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(cs) = self.conf_state {
            self.store
                .log
                .write()
                .expect("log lock poisoned")
                .conf_state = cs;
        }
        Ok(())
    }
}

// === raft::Storage ===

impl raft::Storage for Store {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.log.read().expect("log lock poisoned");
        Ok(RaftState::new(st.hard_state.clone(), st.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        {
            let st = self.log.read().expect("log lock poisoned");
            if low <= st.truncated_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if high > st.last_index() + 1 {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let start = u64_key(low);
        for item in self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (_, v) = item.map_err(|e| to_raft_err(e.into()))?;
            let e =
                Entry::parse_from_bytes(&v).map_err(|e| to_raft_err(corrupt("log entry", e)))?;
            if e.index >= high {
                break;
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        if out.first().map(|e| e.index) != Some(low) {
            // Compacted concurrently (we hold no lock while reading).
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let st = self.log.read().expect("log lock poisoned");
        if idx == st.truncated_index {
            return Ok(st.truncated_term);
        }
        if idx < st.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > st.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(st.terms[(idx - st.truncated_index - 1) as usize])
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.read().expect("log lock poisoned").first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.read().expect("log lock poisoned").last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.build_snapshot().map_err(to_raft_err)?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests;
mod virtual_ips;
