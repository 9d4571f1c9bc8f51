//! The zone's RocksDB store: what it received from global (applied atomically per change
//! set, together with the revision), what it owns (its dataplanes, ingresses and
//! zone-origin policies), its zone certificate and its intermediate mesh CAs. A restart
//! serves all of it without global. Private keys (the zone certificate's, the
//! intermediate CAs') are sealed under the zone's seal key on the way in and opened on
//! the way out, so the RocksDB files never hold one in clear.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use causeway_api::{Resource, ResourceKey};
use causeway_disk::{DiskEvent, DiskReport, DiskWatch};
use causeway_pki::sealing::{SealError, Sealer};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

const CF_RESOURCES: &str = "resources";
const CF_META: &str = "meta";
const KEY_REVISION: &[u8] = b"revision";
const KEY_LOCAL_SEQ: &[u8] = b"local_seq";
const KEY_IDENTITY: &[u8] = b"identity";
/// The key a zone enrolls with, kept from before its first attempt until it has an
/// identity: its zone token is single use, and only a retry with the same key gets a
/// certificate after an answer lost on the way.
const KEY_ENROLLMENT_KEY: &[u8] = b"enrollment-key";
const KEY_TOKEN_RENEWAL_KEY: &[u8] = b"token-renewal-key";
/// Renewal keys a rotation replaced, still verifying what they signed for an overlap.
const KEY_RETIRING_RENEWAL_KEYS: &[u8] = b"retiring-token-renewal-keys";

/// A renewal key a rotation replaced: its public half verifies the tokens it renewed
/// until `retires_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetiringRenewalKey {
    pub public_key: String,
    pub retires_at: i64,
}
const KEY_INTERMEDIATE_PREFIX: &[u8] = b"intermediate/";
const KEY_TRUST: &[u8] = b"trust";
/// Earlier token-signing public keys, still verifying during a rotation's overlap.
const KEY_TRUST_RETIRING: &[u8] = b"trust_retiring";
const KEY_REVOKED_CAS: &[u8] = b"revoked_cas";
const KEY_REVOKED_TOKENS: &[u8] = b"revoked_tokens";
const KEY_MESH_ROOTS: &[u8] = b"mesh_roots";
/// Dataplanes registered by a sidecar's DDS stream (removed when it goes away).
const KEY_LIVE_PREFIX: &[u8] = b"dds_registered/";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the zone store at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error(
        "the zone store in {path} is damaged ({source}): restore the data dir from a backup, or start the zone anew in an empty one with a new zone token (`causeway zone token create`): global sends it its state again, and its sidecars register again"
    )]
    Damaged {
        path: String,
        source: rocksdb::Error,
    },
    #[error("zone store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("zone store holds a corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("the zone store's {what} key cannot be opened with --seal-key-file: {source}")]
    Sealed {
        what: &'static str,
        source: SealError,
    },
    #[error("generating the zone's {what}: {reason}")]
    Generate { what: &'static str, reason: String },
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

/// The zone's KDS identity: its certificate, key, the zone CA and the CA that signs the
/// global control plane's certificates.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub global_ca_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    /// The id of the zone token it enrolled with: a token with another id enrols the
    /// zone again. Empty when an earlier version enrolled it.
    #[serde(default)]
    pub enrolled_with: String,
}

impl Intermediate {
    /// SHA-256 (DER, hex) of the intermediate certificate: the issuer its sidecars'
    /// certificates name.
    pub fn sha256(&self) -> String {
        causeway_pki::first_cert_sha256(&self.cert_pem)
    }

    /// SHA-256 of the root that signed it.
    pub fn root_sha256(&self) -> String {
        causeway_pki::first_cert_sha256(&self.root_pem)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A mesh's roots as global sends them (`Trust.mesh_roots`): one, or two during a root
/// CA rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRoots {
    pub mesh: String,
    /// Every root the mesh's proxies trust (PEM).
    pub bundle_pem: String,
    /// SHA-256 of each (DER, hex).
    pub trusted_sha256: Vec<String>,
    /// SHA-256 of the root that signs intermediates now.
    pub signing_sha256: String,
}

/// The zone's intermediate CA of one mesh (signs workload certificates).
#[derive(Clone, Serialize, Deserialize)]
pub struct Intermediate {
    pub mesh: String,
    /// Intermediate certificate followed by the mesh root.
    pub cert_pem: String,
    pub key_pem: String,
    pub root_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intermediate")
            .field("mesh", &self.mesh)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// True once `now` is past `at_percent` of the lifetime `[not_before, not_after]`.
pub fn due_for_renewal(not_before: i64, not_after: i64, now: i64, at_percent: i64) -> bool {
    now >= not_before + (not_after - not_before) * at_percent / 100
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    sealer: Arc<Sealer>,
    /// The options the store was opened with, for its statistics (WAL syncs).
    opts: Arc<Options>,
    /// Free space under the store, measured at most once a second by the local writes
    /// that check it (`None`: not watched).
    disk: Option<Arc<std::sync::Mutex<DiskWatch>>>,
}

/// Writes that must survive a power loss, not only a crash of the process: the zone's
/// identity and CA material, the token-verifying key, registrations and zone-owned
/// resources (a Dataplane, a zone-local policy). RocksDB's WAL is synced before the
/// write returns. What global sends (policies, revisions) is not: a zone that lost the
/// last of it on a power cut asks global for it again.
fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn key_bytes(k: &ResourceKey) -> Vec<u8> {
    format!("{}\0{}\0{}", k.kind, k.mesh, k.name).into_bytes()
}

fn u64_value(v: Option<Vec<u8>>) -> Result<u64, StoreError> {
    match v {
        Some(b) => Ok(u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| corrupt("counter", "not 8 bytes"))?,
        )),
        None => Ok(0),
    }
}

/// Resource counts reported to global.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub resources: u64,
    pub dataplanes: u64,
    pub zone_ingresses: u64,
}

/// Outcome of a local write.
#[derive(Debug)]
pub enum LocalWriteError {
    /// The name belongs to a global resource (or another zone's).
    NotOwned {
        origin: String,
    },
    MeshMissing(String),
    NotFound,
    /// The data dir's disk is under its reserve; the reason names it, the free space
    /// and the reserve.
    DiskLow(String),
    Store(StoreError),
}

impl From<StoreError> for LocalWriteError {
    fn from(e: StoreError) -> Self {
        LocalWriteError::Store(e)
    }
}

impl Store {
    /// Opens (or creates) the store at `dir`; `sealer` seals the keys it holds.
    pub fn open(dir: &Path, sealer: Arc<Sealer>) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Counts WAL syncs (and the rest of RocksDB's tickers), for the synced writes.
        opts.enable_statistics();
        let cfs = [CF_RESOURCES, CF_META]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| {
            let path = dir.display().to_string();
            match source.kind() {
                rocksdb::ErrorKind::Corruption => StoreError::Damaged { path, source },
                _ => StoreError::Open { path, source },
            }
        })?;
        Ok(Store {
            db: Arc::new(db),
            sealer,
            opts: Arc::new(opts),
            disk: None,
        })
    }

    /// Keeps `reserve_bytes` free under `dir` (the data dir): while less is free,
    /// [`Store::put_local`] refuses (a user's policy, a proxy's registration, a drill's
    /// report), so RocksDB never meets a full disk in the middle of a write. What global
    /// sends, the zone's identity and deletes still go through: they keep the zone whole
    /// and in sync, and deletes free space.
    pub fn with_disk_reserve(mut self, dir: PathBuf, reserve_bytes: u64) -> Store {
        self.disk = Some(Arc::new(std::sync::Mutex::new(DiskWatch::new(
            dir,
            reserve_bytes,
        ))));
        self
    }

    /// The disk as last measured (measuring it if a second has passed), if watched.
    pub fn disk(&self) -> Option<DiskReport> {
        let disk = self.disk.as_ref()?;
        let mut w = disk.lock().expect("disk lock");
        match w.poll(std::time::Instant::now()) {
            Some(DiskEvent::TurnedLow) => tracing::error!(
                dir = %w.dir.display(),
                free_mib = w.report().free_bytes >> 20,
                reserve_mib = w.report().reserve_bytes >> 20,
                "the data dir's disk is under its reserve: refusing local writes until space is freed"
            ),
            Some(DiskEvent::Recovered) => tracing::info!(
                dir = %w.dir.display(),
                free_mib = w.report().free_bytes >> 20,
                "the data dir's disk has room again: taking local writes"
            ),
            None => {}
        }
        Some(w.report())
    }

    /// Why a local write is refused now, if the disk is under its reserve.
    fn disk_refusal(&self) -> Option<String> {
        let report = self.disk().filter(|r| r.low)?;
        let w = self.disk.as_ref()?.lock().expect("disk lock");
        Some(report.refusal(&w.dir))
    }

    /// How many times the WAL was synced since the store opened.
    pub fn wal_syncs(&self) -> u64 {
        self.opts
            .get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn meta_json<T: serde::de::DeserializeOwned>(
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

    /// The last global revision applied (0: never synced).
    pub fn revision(&self) -> Result<u64, StoreError> {
        u64_value(self.db.get_cf(self.cf(CF_META), KEY_REVISION)?)
    }

    /// Applies one change set from global atomically, with its revision. A full set
    /// replaces every resource the zone does not own. Returns the number of changes.
    pub fn apply_set(
        &self,
        zone: &str,
        revision: u64,
        full: bool,
        upserts: &[Resource],
        tombstones: &[ResourceKey],
    ) -> Result<usize, StoreError> {
        let cf = self.cf(CF_RESOURCES);
        let mut batch = WriteBatch::default();
        if full {
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, v) = item?;
                let r: Resource = serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?;
                if r.origin.as_deref() != Some(zone) {
                    batch.delete_cf(cf, k);
                }
            }
        }
        for r in upserts {
            batch.put_cf(
                cf,
                key_bytes(&r.key()),
                serde_json::to_vec(r).expect("resources serialize"),
            );
        }
        for k in tombstones {
            // Never drop what the zone owns on the word of a tombstone.
            if let Some(cur) = self.get(k)?
                && cur.origin.as_deref() == Some(zone)
            {
                continue;
            }
            batch.delete_cf(cf, key_bytes(k));
        }
        batch.put_cf(self.cf(CF_META), KEY_REVISION, revision.to_be_bytes());
        self.db.write(batch)?;
        Ok(upserts.len() + tombstones.len())
    }

    pub fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        match self.db.get_cf(self.cf(CF_RESOURCES), key_bytes(key))? {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| corrupt("resource", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Resources of `kind` in `mesh` ("" for global types) in name order, after `after`.
    pub fn list(
        &self,
        kind: &str,
        mesh: &str,
        after: Option<&str>,
        mut keep: impl FnMut(&Resource) -> bool,
        limit: usize,
    ) -> Result<(Vec<Resource>, Option<String>), StoreError> {
        let prefix = format!("{kind}\0{mesh}\0").into_bytes();
        let mut start = prefix.clone();
        if let Some(a) = after {
            start.extend_from_slice(a.as_bytes());
            start.push(0);
        }
        let mut items = Vec::new();
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
            if !keep(&r) {
                continue;
            }
            if items.len() == limit {
                let next = items.last().map(|r: &Resource| r.name.clone());
                return Ok((items, next));
            }
            items.push(r);
        }
        Ok((items, None))
    }

    /// Every resource, for counts and dumps.
    pub fn all(&self) -> Result<Vec<Resource>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RESOURCES), IteratorMode::Start)
        {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?);
        }
        Ok(out)
    }

    /// Counts for insight: all resources, dataplanes, and the zone's own ingresses.
    /// Reads keys only, except for the (few) ingresses.
    pub fn counts(&self, zone: &str) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RESOURCES), IteratorMode::Start)
        {
            let (k, v) = item?;
            c.resources += 1;
            if k.starts_with(b"Dataplane\0") {
                c.dataplanes += 1;
            } else if k.starts_with(b"ZoneIngress\0") {
                let r: Resource = serde_json::from_slice(&v).map_err(|e| corrupt("resource", e))?;
                if r.origin.as_deref() == Some(zone) {
                    c.zone_ingresses += 1;
                }
            }
        }
        Ok(c)
    }

    /// The resources the zone owns.
    pub fn owned(&self, zone: &str) -> Result<Vec<Resource>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.origin.as_deref() == Some(zone))
            .collect())
    }

    /// Creates or replaces a zone-owned resource; global ones cannot be changed here.
    pub fn put_local(
        &self,
        zone: &str,
        mut r: Resource,
        now: time::OffsetDateTime,
    ) -> Result<(Resource, bool), LocalWriteError> {
        if let Some(why) = self.disk_refusal() {
            return Err(LocalWriteError::DiskLow(why));
        }
        let key = r.key();
        let old = self.get(&key)?;
        if let Some(o) = &old
            && o.origin.as_deref() != Some(zone)
        {
            return Err(LocalWriteError::NotOwned {
                origin: o.origin.clone().unwrap_or_else(|| "global".into()),
            });
        }
        if !key.mesh.is_empty() {
            let mesh = ResourceKey {
                kind: "Mesh".into(),
                mesh: String::new(),
                name: key.mesh.clone(),
            };
            if self.get(&mesh)?.is_none() {
                return Err(LocalWriteError::MeshMissing(key.mesh));
            }
        }
        let seq = u64_value(
            self.db
                .get_cf(self.cf(CF_META), KEY_LOCAL_SEQ)
                .map_err(StoreError::from)?,
        )? + 1;
        r.version = Some(seq);
        r.creation_time = Some(old.as_ref().and_then(|o| o.creation_time).unwrap_or(now));
        r.modification_time = Some(now);
        r.origin = Some(zone.to_string());
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_LOCAL_SEQ, seq.to_be_bytes());
        batch.put_cf(
            self.cf(CF_RESOURCES),
            key_bytes(&key),
            serde_json::to_vec(&r).expect("resources serialize"),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(StoreError::from)?;
        Ok((r, old.is_none()))
    }

    /// Deletes a zone-owned resource.
    pub fn delete_local(&self, zone: &str, key: &ResourceKey) -> Result<(), LocalWriteError> {
        match self.get(key)? {
            None => Err(LocalWriteError::NotFound),
            Some(o) if o.origin.as_deref() != Some(zone) => Err(LocalWriteError::NotOwned {
                origin: o.origin.unwrap_or_else(|| "global".into()),
            }),
            Some(_) => {
                self.db
                    .delete_cf_opt(self.cf(CF_RESOURCES), key_bytes(key), &synced())
                    .map_err(StoreError::from)?;
                Ok(())
            }
        }
    }

    /// A seal key rotation: every key stored under the previous seal key is sealed again
    /// under the current one (in one synced batch), then RocksDB's history is purged
    /// (memtables flushed with their write-ahead log, every file rewritten), so the store
    /// holds nothing the previous key opens. Returns how many keys were sealed again.
    pub fn reseal(&self) -> Result<usize, StoreError> {
        let meta = self.cf(CF_META);
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0;
        let again = |what: &'static str, sealed: &str| {
            self.sealer
                .reseal(sealed)
                .map_err(|source| StoreError::Sealed { what, source })
        };
        if let Some(mut id) = self.meta_json::<Identity>(KEY_IDENTITY, "zone identity")?
            && let Some(v) = again("zone certificate", &id.key_pem)?
        {
            id.key_pem = v;
            batch.put_cf(
                meta,
                KEY_IDENTITY,
                serde_json::to_vec(&id).expect("encodes"),
            );
            n += 1;
        }
        for (key, what) in [
            (KEY_ENROLLMENT_KEY, "enrollment key"),
            (KEY_TOKEN_RENEWAL_KEY, "token renewal key"),
        ] {
            if let Some(sealed) = self.meta_json::<String>(key, what)?
                && let Some(v) = again(what, &sealed)?
            {
                batch.put_cf(meta, key, serde_json::to_vec(&v).expect("encodes"));
                n += 1;
            }
        }
        for (k, mut i) in self.sealed_intermediates()? {
            if let Some(v) = again("intermediate CA", &i.key_pem)? {
                i.key_pem = v;
                batch.put_cf(meta, &k, serde_json::to_vec(&i).expect("encodes"));
                n += 1;
            }
        }
        if n > 0 {
            self.db.write_opt(batch, &synced())?;
        }
        causeway_disk::purge_rocksdb_history(&self.db, &[CF_RESOURCES, CF_META])?;
        Ok(n)
    }

    /// Opens a sealed key read from the store.
    fn open_key(&self, what: &'static str, sealed: String) -> Result<String, StoreError> {
        self.sealer
            .open(&sealed)
            .map_err(|source| StoreError::Sealed { what, source })
    }

    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        let Some(mut id) = self.meta_json::<Identity>(KEY_IDENTITY, "zone identity")? else {
            return Ok(None);
        };
        id.key_pem = self.open_key("zone certificate", id.key_pem)?;
        Ok(Some(id))
    }

    /// Stores the zone's identity (synced), and drops the enrollment key it was made with.
    pub fn set_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let sealed = Identity {
            key_pem: self.sealer.seal(&id.key_pem),
            ..id.clone()
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(CF_META),
            KEY_IDENTITY,
            serde_json::to_vec(&sealed).expect("encodes"),
        );
        batch.delete_cf(self.cf(CF_META), KEY_ENROLLMENT_KEY);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The private key (PEM) this zone enrolls with, once stored.
    pub fn enrollment_key(&self) -> Result<Option<String>, StoreError> {
        match self.meta_json::<String>(KEY_ENROLLMENT_KEY, "enrollment key")? {
            Some(sealed) => Ok(Some(self.open_key("enrollment key", sealed)?)),
            None => Ok(None),
        }
    }

    /// Stores (sealed, synced) the key to enroll with before the first attempt, so every
    /// attempt until one succeeds uses the same key.
    pub fn set_enrollment_key(&self, key_pem: &str) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            KEY_ENROLLMENT_KEY,
            serde_json::to_vec(&self.sealer.seal(key_pem)).expect("encodes"),
            &synced(),
        )?;
        Ok(())
    }

    /// The Ed25519 key (PKCS#8 hex) this zone renews its proxies' tokens with: created
    /// (sealed, synced) on first use, the same across restarts so renewed tokens stay
    /// valid.
    pub fn token_renewal_key(&self) -> Result<String, StoreError> {
        if let Some(sealed) =
            self.meta_json::<String>(KEY_TOKEN_RENEWAL_KEY, "token renewal key")?
        {
            return self.open_key("token renewal key", sealed);
        }
        let key =
            causeway_pki::dataplane_token::generate_key().map_err(|e| StoreError::Generate {
                what: "token renewal key",
                reason: e.to_string(),
            })?;
        self.db.put_cf_opt(
            self.cf(CF_META),
            KEY_TOKEN_RENEWAL_KEY,
            serde_json::to_vec(&self.sealer.seal(&key)).expect("encodes"),
            &synced(),
        )?;
        Ok(key)
    }

    /// The public halves of renewal keys a rotation replaced that still verify at `now`.
    pub fn retiring_renewal_keys(&self, now: i64) -> Result<Vec<String>, StoreError> {
        Ok(self
            .live_retiring_renewal_keys(now)?
            .into_iter()
            .map(|k| k.public_key)
            .collect())
    }

    fn live_retiring_renewal_keys(&self, now: i64) -> Result<Vec<RetiringRenewalKey>, StoreError> {
        Ok(self
            .meta_json::<Vec<RetiringRenewalKey>>(
                KEY_RETIRING_RENEWAL_KEYS,
                "retiring renewal keys",
            )?
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.retires_at > now)
            .collect())
    }

    /// Replaces the renewal key with a new one (returned, private, PKCS#8 hex); the one
    /// it replaces verifies for `overlap_secs` more (0: none but the new key verifies). Both in one synced
    /// write: a crash leaves the old key or the new one, never neither.
    pub fn rotate_token_renewal_key(
        &self,
        now: i64,
        overlap_secs: i64,
    ) -> Result<String, StoreError> {
        let old = self.token_renewal_key()?;
        let old_public =
            causeway_pki::dataplane_token::public_key(&old).map_err(|e| StoreError::Generate {
                what: "token renewal key",
                reason: e.to_string(),
            })?;
        let new =
            causeway_pki::dataplane_token::generate_key().map_err(|e| StoreError::Generate {
                what: "token renewal key",
                reason: e.to_string(),
            })?;
        let mut retiring = self.live_retiring_renewal_keys(now)?;
        if overlap_secs > 0 {
            retiring.push(RetiringRenewalKey {
                public_key: old_public,
                retires_at: now + overlap_secs,
            });
        } else {
            // A leak: from now on only the new key verifies, not even an older one
            // still in its overlap.
            retiring.clear();
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(CF_META),
            KEY_TOKEN_RENEWAL_KEY,
            serde_json::to_vec(&self.sealer.seal(&new)).expect("encodes"),
        );
        batch.put_cf(
            self.cf(CF_META),
            KEY_RETIRING_RENEWAL_KEYS,
            serde_json::to_vec(&retiring).expect("encodes"),
        );
        self.db.write_opt(batch, &synced())?;
        Ok(new)
    }

    /// Marks (or unmarks) a Dataplane as registered by a live sidecar stream.
    pub fn set_stream_registered(&self, key: &ResourceKey, on: bool) -> Result<(), StoreError> {
        let mut k = KEY_LIVE_PREFIX.to_vec();
        k.extend_from_slice(&key_bytes(key));
        if on {
            self.db.put_cf_opt(self.cf(CF_META), k, b"", &synced())?;
        } else {
            self.db.delete_cf_opt(self.cf(CF_META), k, &synced())?;
        }
        Ok(())
    }

    /// Dataplanes registered by sidecar streams, for the clean-up after a restart.
    pub fn stream_registered(&self) -> Result<Vec<ResourceKey>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(KEY_LIVE_PREFIX, Direction::Forward),
        );
        for item in it {
            let (k, _) = item?;
            if !k.starts_with(KEY_LIVE_PREFIX) {
                break;
            }
            let s = String::from_utf8_lossy(&k[KEY_LIVE_PREFIX.len()..]).into_owned();
            let mut p = s.splitn(3, '\0');
            if let (Some(kind), Some(mesh), Some(name)) = (p.next(), p.next(), p.next()) {
                out.push(ResourceKey {
                    kind: kind.into(),
                    mesh: mesh.into(),
                    name: name.into(),
                });
            }
        }
        Ok(out)
    }

    /// Revoked intermediate CAs as (mesh, SHA-256 hex), as global last sent them.
    pub fn revoked_cas(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .meta_json(KEY_REVOKED_CAS, "revoked CAs")?
            .unwrap_or_default())
    }

    pub fn set_revoked_cas(&self, cas: &[(String, String)]) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            KEY_REVOKED_CAS,
            serde_json::to_vec(cas).expect("encodes"),
            &synced(),
        )?;
        Ok(())
    }

    /// Revoked dataplane and ingress tokens as (id, expiry in Unix seconds), as global
    /// last sent them.
    pub fn revoked_tokens(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self
            .meta_json(KEY_REVOKED_TOKENS, "revoked tokens")?
            .unwrap_or_default())
    }

    pub fn set_revoked_tokens(&self, tokens: &[(String, i64)]) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            KEY_REVOKED_TOKENS,
            serde_json::to_vec(tokens).expect("encodes"),
            &synced(),
        )?;
        Ok(())
    }

    /// Each mesh's trusted roots and signing root, as global last sent them.
    pub fn mesh_roots(&self) -> Result<Vec<MeshRoots>, StoreError> {
        Ok(self
            .meta_json(KEY_MESH_ROOTS, "mesh roots")?
            .unwrap_or_default())
    }

    /// The trusted roots of `mesh`, when global sent them.
    pub fn roots_of(&self, mesh: &str) -> Result<Option<MeshRoots>, StoreError> {
        Ok(self.mesh_roots()?.into_iter().find(|r| r.mesh == mesh))
    }

    pub fn set_mesh_roots(&self, roots: &[MeshRoots]) -> Result<(), StoreError> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            KEY_MESH_ROOTS,
            serde_json::to_vec(roots).expect("encodes"),
            &synced(),
        )?;
        Ok(())
    }

    pub fn delete_intermediate(&self, mesh: &str) -> Result<(), StoreError> {
        let mut k = KEY_INTERMEDIATE_PREFIX.to_vec();
        k.extend_from_slice(mesh.as_bytes());
        self.db.delete_cf_opt(self.cf(CF_META), k, &synced())?;
        Ok(())
    }

    /// The public key that signs dataplane tokens now (hex), as global last sent it.
    fn dataplane_token_public_key(&self) -> Result<Option<String>, StoreError> {
        self.meta_json(KEY_TRUST, "trust")
    }

    /// Every public key that verifies dataplane and ingress tokens now: the one that
    /// signs, then those a rotation keeps for its overlap. Empty before global sent any.
    pub fn token_public_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = self.dataplane_token_public_key()?.into_iter().collect();
        keys.extend(
            self.meta_json::<Vec<String>>(KEY_TRUST_RETIRING, "retiring token keys")?
                .unwrap_or_default(),
        );
        Ok(keys)
    }

    /// Stores the keys global sent: the one that signs and those retiring (synced).
    pub fn set_token_public_keys(
        &self,
        current: &str,
        retiring: &[String],
    ) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(CF_META),
            KEY_TRUST,
            serde_json::to_vec(current).expect("encodes"),
        );
        batch.put_cf(
            self.cf(CF_META),
            KEY_TRUST_RETIRING,
            serde_json::to_vec(retiring).expect("encodes"),
        );
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    pub fn intermediate(&self, mesh: &str) -> Result<Option<Intermediate>, StoreError> {
        let mut k = KEY_INTERMEDIATE_PREFIX.to_vec();
        k.extend_from_slice(mesh.as_bytes());
        let Some(mut i) = self.meta_json::<Intermediate>(&k, "intermediate CA")? else {
            return Ok(None);
        };
        i.key_pem = self.open_key("intermediate CA", i.key_pem)?;
        Ok(Some(i))
    }

    /// SHA-256 of the intermediate CA of `mesh` and of its root, without opening its
    /// key: what proxies' configs and the zone's insight name, read on every config
    /// computation and heartbeat.
    pub fn intermediate_hashes(&self, mesh: &str) -> Result<Option<(String, String)>, StoreError> {
        let mut k = KEY_INTERMEDIATE_PREFIX.to_vec();
        k.extend_from_slice(mesh.as_bytes());
        Ok(self
            .meta_json::<Intermediate>(&k, "intermediate CA")?
            .map(|i| (i.sha256(), i.root_sha256())))
    }

    pub fn set_intermediate(&self, i: &Intermediate) -> Result<(), StoreError> {
        let mut k = KEY_INTERMEDIATE_PREFIX.to_vec();
        k.extend_from_slice(i.mesh.as_bytes());
        let sealed = Intermediate {
            key_pem: self.sealer.seal(&i.key_pem),
            ..i.clone()
        };
        self.db.put_cf_opt(
            self.cf(CF_META),
            k,
            serde_json::to_vec(&sealed).expect("encodes"),
            &synced(),
        )?;
        Ok(())
    }

    pub fn intermediates(&self) -> Result<Vec<Intermediate>, StoreError> {
        self.sealed_intermediates()?
            .into_iter()
            .map(|(_, mut i)| {
                i.key_pem = self.open_key("intermediate CA", i.key_pem)?;
                Ok(i)
            })
            .collect()
    }

    /// The intermediate CAs as stored (keys sealed), with their store keys.
    fn sealed_intermediates(&self) -> Result<Vec<(Vec<u8>, Intermediate)>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(KEY_INTERMEDIATE_PREFIX, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(KEY_INTERMEDIATE_PREFIX) {
                break;
            }
            let i = serde_json::from_slice(&v).map_err(|e| corrupt("intermediate CA", e))?;
            out.push((k.to_vec(), i));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(&[5u8; 32]).expect("a 32-byte key"))
    }

    /// Each write that must survive a power loss syncs the WAL before it returns.
    #[test]
    fn identity_ca_material_and_registrations_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        let key = ResourceKey {
            kind: "Dataplane".into(),
            mesh: "m".into(),
            name: "web-1".into(),
        };
        type Write<'a> = Box<dyn Fn(&Store) + 'a>;
        let writes: Vec<(&str, Write<'_>)> = vec![
            (
                "enrollment key",
                Box::new(|s| s.set_enrollment_key("key").unwrap()),
            ),
            (
                "identity",
                Box::new(|s| {
                    s.set_identity(&Identity {
                        cert_pem: "cert".into(),
                        key_pem: "key".into(),
                        global_ca_pem: "ca".into(),
                        not_before: 0,
                        not_after: 1,
                        enrolled_with: String::new(),
                    })
                    .unwrap()
                }),
            ),
            (
                "intermediate CA",
                Box::new(|s| {
                    s.set_intermediate(&Intermediate {
                        mesh: "m".into(),
                        cert_pem: "cert".into(),
                        key_pem: "key".into(),
                        root_pem: "root".into(),
                        not_before: 0,
                        not_after: 1,
                    })
                    .unwrap()
                }),
            ),
            (
                "revoked CAs",
                Box::new(|s| s.set_revoked_cas(&[("m".into(), "ab".into())]).unwrap()),
            ),
            (
                "token key",
                Box::new(|s| s.set_token_public_keys("k", &[]).unwrap()),
            ),
            (
                "registration",
                Box::new(move |s| s.set_stream_registered(&key, true).unwrap()),
            ),
            (
                "revoked tokens",
                Box::new(|s| s.set_revoked_tokens(&[("id".into(), 1)]).unwrap()),
            ),
            (
                "forgotten CA",
                Box::new(|s| s.delete_intermediate("m").unwrap()),
            ),
        ];
        for (what, write) in writes {
            let before = s.wal_syncs();
            write(&s);
            assert!(s.wal_syncs() > before, "{what} was not synced");
        }
    }

    /// Every enrollment attempt uses one key until the zone has an identity; the key then
    /// goes (the identity holds its own).
    #[test]
    fn the_enrollment_key_lasts_until_the_zone_has_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        assert_eq!(s.enrollment_key().unwrap(), None);
        s.set_enrollment_key("the-key").unwrap();
        drop(s);
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        assert_eq!(s.enrollment_key().unwrap().as_deref(), Some("the-key"));
        s.set_identity(&Identity {
            cert_pem: "cert".into(),
            key_pem: "the-key".into(),
            global_ca_pem: "ca".into(),
            not_before: 0,
            not_after: 1,
            enrolled_with: String::new(),
        })
        .unwrap();
        assert_eq!(s.enrollment_key().unwrap(), None);
    }

    #[test]
    fn keys_are_sealed_in_the_store_and_open_on_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        let key_pem = "-----BEGIN PRIVATE KEY-----\nzone-secret-key\n-----END PRIVATE KEY-----\n";
        s.set_identity(&Identity {
            cert_pem: "cert".into(),
            key_pem: key_pem.into(),
            global_ca_pem: "ca".into(),
            not_before: 0,
            not_after: 1,
            enrolled_with: String::new(),
        })
        .unwrap();
        s.set_intermediate(&Intermediate {
            mesh: "m".into(),
            cert_pem: "cert".into(),
            key_pem: key_pem.into(),
            root_pem: "root".into(),
            not_before: 0,
            not_after: 1,
        })
        .unwrap();
        assert_eq!(s.identity().unwrap().unwrap().key_pem, key_pem);
        assert_eq!(s.intermediate("m").unwrap().unwrap().key_pem, key_pem);
        assert_eq!(s.intermediates().unwrap()[0].key_pem, key_pem);
        for item in s.db.iterator_cf(s.cf(CF_META), IteratorMode::Start) {
            let (_, v) = item.unwrap();
            let v = String::from_utf8_lossy(&v);
            assert!(
                !v.contains("zone-secret-key") && !v.contains("PRIVATE KEY"),
                "{v}"
            );
        }
        drop(s);
        let other = Arc::new(Sealer::new(&[6u8; 32]).unwrap());
        let s = Store::open(dir.path(), other).unwrap();
        let e = s.identity().unwrap_err();
        assert!(e.to_string().contains("--seal-key-file"), "{e}");
    }

    fn res(kind: &str, mesh: &str, name: &str, origin: &str) -> Resource {
        Resource {
            kind: kind.into(),
            mesh: (!mesh.is_empty()).then(|| mesh.to_string()),
            name: name.into(),
            labels: Default::default(),
            spec: serde_json::json!({}),
            version: Some(1),
            creation_time: None,
            modification_time: None,
            origin: Some(origin.into()),
        }
    }

    #[test]
    fn under_the_disk_reserve_local_writes_are_refused_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let web = res("Dataplane", "default", "web-1", "x");
        let s = Store::open(&dir.path().join("db"), test_sealer()).unwrap();
        s.apply_set(
            "zone-a",
            1,
            true,
            &[res("Mesh", "", "default", "global")],
            &[],
        )
        .unwrap();
        s.put_local("zone-a", web.clone(), time::OffsetDateTime::now_utc())
            .unwrap();
        // No disk has this much free: the reserve is never met.
        let s = s.with_disk_reserve(dir.path().to_path_buf(), u64::MAX);
        let refused = s.put_local(
            "zone-a",
            res("Dataplane", "default", "web-2", "x"),
            time::OffsetDateTime::now_utc(),
        );
        match refused {
            Err(LocalWriteError::DiskLow(why)) => {
                assert!(why.contains(&dir.path().display().to_string()), "{why}")
            }
            other => panic!("not refused: {other:?}"),
        }
        assert!(s.disk().unwrap().low);
        // What global sends, and deletes (which free space), still go through.
        let policy = res("MeshTimeout", "default", "t", "global");
        s.apply_set("zone-a", 2, false, std::slice::from_ref(&policy), &[])
            .unwrap();
        assert!(s.get(&policy.key()).unwrap().is_some());
        s.delete_local("zone-a", &web.key()).unwrap();
        assert!(s.get(&web.key()).unwrap().is_none());
    }

    #[test]
    fn full_set_replaces_global_resources_and_keeps_owned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        let mesh = res("Mesh", "", "default", "global");
        let old = res("MeshTimeout", "default", "old", "global");
        s.apply_set("zone-a", 5, true, &[mesh.clone(), old.clone()], &[])
            .unwrap();
        let (mine, created) = s
            .put_local(
                "zone-a",
                res("Dataplane", "default", "web-1", "x"),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert!(created);
        assert_eq!(mine.origin.as_deref(), Some("zone-a"));
        let new = res("MeshRetry", "default", "new", "global");
        s.apply_set("zone-a", 9, true, &[mesh, new.clone()], &[])
            .unwrap();
        assert_eq!(s.revision().unwrap(), 9);
        assert!(
            s.get(&old.key()).unwrap().is_none(),
            "dropped by the full set"
        );
        assert!(s.get(&new.key()).unwrap().is_some());
        assert!(
            s.get(&mine.key()).unwrap().is_some(),
            "owned resources stay"
        );
        // A tombstone never removes an owned resource; it does remove global ones.
        s.apply_set("zone-a", 10, false, &[], &[mine.key(), new.key()])
            .unwrap();
        assert!(s.get(&mine.key()).unwrap().is_some());
        assert!(s.get(&new.key()).unwrap().is_none());
        // Global resources cannot be written locally.
        let mesh_key = ResourceKey {
            kind: "Mesh".into(),
            mesh: String::new(),
            name: "default".into(),
        };
        assert!(matches!(
            s.delete_local("zone-a", &mesh_key),
            Err(LocalWriteError::NotOwned { .. })
        ));
        // Reopen: everything is still there.
        drop(s);
        let s = Store::open(dir.path(), test_sealer()).unwrap();
        assert_eq!(s.revision().unwrap(), 10);
        assert_eq!(s.owned("zone-a").unwrap().len(), 1);
    }

    #[test]
    fn renewal_point() {
        assert!(!due_for_renewal(0, 100, 69, 70));
        assert!(due_for_renewal(0, 100, 70, 70));
    }
}
