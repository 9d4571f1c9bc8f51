//! Sealing of private keys at rest: AES-256-GCM under a seal key that lives outside the
//! data directory, in a file given with `--seal-key-file`. Both control planes use it
//! (the global one for the API, zone and mesh CA keys and the token-signing keys, which
//! also travel sealed through the Raft log; a zone for its identity key, its
//! intermediate CA keys and its API CA key), so a copy of a data directory, a backup or a
//! stolen disk alone reveals no key.
//!
//! The key is created on a node's first start when the file does not exist yet (0600,
//! never over an existing file); a node whose data directory already holds sealed values
//! refuses to start without that key or with another one. A data directory records a
//! sealed check value ([`SEAL_CHECK_FILE`]) so a wrong key is caught at start, before
//! anything is opened.
//!
//! Rotation: a node started with a new key and the one it replaces
//! ([`Sealer::with_previous`]) opens values sealed under either and seals only under the
//! new one; each control plane then seals again ([`Sealer::reseal`]) what it holds under
//! the previous key, so that key can be dropped and destroyed.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

const PREFIX: &str = "sealed-v1:";
/// File in a data directory holding a sealed known value: opening it proves the seal key
/// is the one the directory was sealed with.
pub const SEAL_CHECK_FILE: &str = "seal-check";
const CHECK_PLAINTEXT: &str = "causeway seal check v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading the seal key {path} (given by {flag}): {source}")]
    Read {
        flag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the seal key {path} (given by {flag}) must hold 32 bytes as hex (64 characters) or base64; it holds {len} bytes"
    )]
    BadKeyFile {
        flag: String,
        path: PathBuf,
        len: usize,
    },
    #[error("a seal key must be 32 bytes; got {0}")]
    Length(usize),
    #[error("writing the new seal key {path} (given by {flag}): {source}")]
    Write {
        flag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{flag} {path} does not exist, but the data dir {data_dir} already holds keys sealed under a seal key: restore that key file from your backup and pass it with {flag} (without it the keys cannot be opened)"
    )]
    Missing {
        flag: String,
        path: PathBuf,
        data_dir: PathBuf,
    },
    #[error(
        "{flag} {path} is inside the data dir {data_dir}: keep the seal key outside it (a copy of the data dir must not hold the key that opens it)"
    )]
    InDataDir {
        flag: String,
        path: PathBuf,
        data_dir: PathBuf,
    },
    #[error(
        "{flag} {path} is not the seal key the data dir {data_dir} was sealed with: start with the original key file (from your backup)"
    )]
    WrongKey {
        flag: String,
        path: PathBuf,
        data_dir: PathBuf,
    },
    #[error(
        "{flag} {path} holds another seal key than the cluster's: remove it (the cluster hands its key to a node that joins) or give another path"
    )]
    Mismatch { flag: String, path: PathBuf },
    #[error("the sealed value is damaged or was sealed under another seal key")]
    Open,
    #[error(
        "{flag} {path} is the same key as the seal key: give the key being replaced, or leave {flag} out"
    )]
    SamePrevious { flag: String, path: PathBuf },
    #[error(
        "{flag} {path} does not exist: a rotation starts from a new key every node shares; make it with `causeway seal generate-key --out {path}` and copy it to every node"
    )]
    NewKeyMissing { flag: String, path: PathBuf },
    #[error(
        "a stored key is not sealed: this data dir was written by an older version that kept keys in clear, and migrating it is not supported; start from a new data dir"
    )]
    NotSealed,
}

/// The seal key of a node, and during a rotation the key it replaces.
pub struct Sealer {
    key: LessSafeKey,
    /// The key itself, kept so a cluster can hand it to a node that joins with a valid
    /// join token (over TLS; see the global control plane's join).
    raw: [u8; 32],
    /// The key this one replaces: it opens what is not sealed again yet, never seals.
    previous: Option<Box<Sealer>>,
}

/// Which key a sealed value is sealed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedUnder {
    /// The seal key.
    Current,
    /// The key being replaced: to seal again before that key is dropped.
    Previous,
    /// Neither (or the value is damaged, or not sealed at all).
    Unknown,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b
}

impl Sealer {
    pub fn new(key: &[u8]) -> Result<Sealer, SealError> {
        let raw: [u8; 32] = key.try_into().map_err(|_| SealError::Length(key.len()))?;
        let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Length(key.len()))?;
        Ok(Sealer {
            key: LessSafeKey::new(k),
            raw,
            previous: None,
        })
    }

    /// This key, also opening what `previous` sealed (a rotation's start).
    pub fn with_previous(mut self, previous: Sealer) -> Sealer {
        self.previous = Some(Box::new(Sealer {
            previous: None,
            ..previous
        }));
        self
    }

    /// Whether a previous key is given (a rotation is under way).
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// A short, public fingerprint of the key (SHA-256 of a label and the key, 16 hex
    /// digits): which key a node runs with, without revealing it.
    pub fn key_id(&self) -> String {
        let mut labelled = b"causeway seal key id\0".to_vec();
        labelled.extend_from_slice(&self.raw);
        crate::sha256_hex(&labelled)[..16].to_string()
    }

    /// The previous key's fingerprint, during a rotation.
    pub fn previous_key_id(&self) -> Option<String> {
        self.previous.as_ref().map(|p| p.key_id())
    }

    /// Which key `sealed` is sealed under.
    pub fn sealed_under(&self, sealed: &str) -> SealedUnder {
        if self.open_own(sealed).is_ok() {
            SealedUnder::Current
        } else if self
            .previous
            .as_ref()
            .is_some_and(|p| p.open_own(sealed).is_ok())
        {
            SealedUnder::Previous
        } else {
            SealedUnder::Unknown
        }
    }

    /// `sealed` sealed again under the current key when it is under the previous one;
    /// `None` when it is under the current key already. An error when neither opens it.
    pub fn reseal(&self, sealed: &str) -> Result<Option<String>, SealError> {
        if self.open_own(sealed).is_ok() {
            return Ok(None);
        }
        let previous = self.previous.as_ref().ok_or(SealError::Open)?;
        Ok(Some(self.seal(&previous.open_own(sealed)?)))
    }

    /// Reads a key file: 32 bytes as hex or base64 (whitespace ignored). `flag` names the
    /// setting that gave the path, for errors.
    pub fn from_file(flag: &str, path: &Path) -> Result<Sealer, SealError> {
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Read {
            flag: flag.into(),
            path: path.into(),
            source,
        })?;
        Sealer::from_text(flag, path, &text)
    }

    /// A key file's contents (`path` and `flag` only name it in errors).
    fn from_text(flag: &str, path: &Path, text: &str) -> Result<Sealer, SealError> {
        let t = text.trim();
        let bytes = hex::decode(t)
            .ok()
            .or_else(|| B64.decode(t).ok())
            .unwrap_or_else(|| t.as_bytes().to_vec());
        if bytes.len() != 32 {
            return Err(SealError::BadKeyFile {
                flag: flag.into(),
                path: path.into(),
                len: bytes.len(),
            });
        }
        Sealer::new(&bytes)
    }

    /// A fresh key file's contents (hex).
    pub fn generate_key_file() -> String {
        format!("{}\n", hex::encode(random::<32>()))
    }

    /// This key as a key file's contents (hex), for handing to a joining node.
    pub fn key_file_contents(&self) -> String {
        format!("{}\n", hex::encode(self.raw))
    }

    /// Writes `contents` (a key file, as [`Sealer::key_file_contents`] makes it) to
    /// `path` (0600) unless a key file is there already; an existing file must hold the
    /// same key, and `path` must be outside `data_dir`. `flag` names the setting that
    /// gave the path, for errors.
    pub fn install_key_file(
        flag: &str,
        path: &Path,
        data_dir: &Path,
        contents: &str,
    ) -> Result<(), SealError> {
        check_outside(flag, path, data_dir)?;
        let given = Sealer::from_text(flag, path, contents)?;
        if path.exists() {
            let have = Sealer::from_file(flag, path)?;
            if have.raw != given.raw {
                return Err(SealError::Mismatch {
                    flag: flag.into(),
                    path: path.into(),
                });
            }
            return Ok(());
        }
        create_key_file_with(path, contents).map_err(|source| SealError::Write {
            flag: flag.into(),
            path: path.into(),
            source,
        })?;
        Ok(())
    }

    /// The seal key of a node whose data dir is `data_dir`, from `path` (given by
    /// `flag`). When `path` does not exist and nothing in `data_dir` is sealed yet (a
    /// first start), a new key is written there (0600; never over a file another
    /// process created meanwhile, so nodes sharing the path share the key). Then checks
    /// (or, on a first start, records) that this key is the one the data dir is sealed
    /// with. The data dir must exist. Returns the sealer and whether the key was created.
    pub fn load_or_create(
        flag: &str,
        path: &Path,
        data_dir: &Path,
    ) -> Result<(Sealer, bool), SealError> {
        check_outside(flag, path, data_dir)?;
        let check = data_dir.join(SEAL_CHECK_FILE);
        let mut created = false;
        if !path.exists() {
            if check.exists() {
                return Err(SealError::Missing {
                    flag: flag.into(),
                    path: path.into(),
                    data_dir: data_dir.into(),
                });
            }
            created = create_key_file(path).map_err(|source| SealError::Write {
                flag: flag.into(),
                path: path.into(),
                source,
            })?;
        }
        let sealer = Sealer::from_file(flag, path)?;
        sealer.check_data_dir(flag, path, data_dir)?;
        Ok((sealer, created))
    }

    /// The seal key a control plane starts with: [`Sealer::load_rotating`] when a
    /// previous key is given (`previous`: its flag and path), else
    /// [`Sealer::load_or_create`]. Returns the sealer and whether the key was created.
    pub fn load(
        (flag, path): (&str, &Path),
        previous: Option<(&str, &Path)>,
        data_dir: &Path,
    ) -> Result<(Sealer, bool), SealError> {
        match previous {
            Some(previous) => Ok((
                Sealer::load_rotating((flag, path), previous, data_dir)?,
                false,
            )),
            None => Sealer::load_or_create(flag, path, data_dir),
        }
    }

    /// [`Sealer::load_or_create`] for a rotation: the new key from `path` (given by
    /// `flag`; it must exist, as every node needs the same one) and the key it replaces
    /// from `previous` (given by `previous_flag`). The data dir may be sealed under
    /// either; the caller seals again what it holds, then [`Sealer::record_check`].
    pub fn load_rotating(
        (flag, path): (&str, &Path),
        (previous_flag, previous): (&str, &Path),
        data_dir: &Path,
    ) -> Result<Sealer, SealError> {
        check_outside(flag, path, data_dir)?;
        check_outside(previous_flag, previous, data_dir)?;
        if !path.exists() {
            return Err(SealError::NewKeyMissing {
                flag: flag.into(),
                path: path.into(),
            });
        }
        let new = Sealer::from_file(flag, path)?;
        let old = Sealer::from_file(previous_flag, previous)?;
        if old.raw == new.raw {
            return Err(SealError::SamePrevious {
                flag: previous_flag.into(),
                path: previous.into(),
            });
        }
        let sealer = new.with_previous(old);
        sealer.check_data_dir(flag, path, data_dir)?;
        Ok(sealer)
    }

    /// Seals the data dir's check value under the current key (after a rotation sealed
    /// everything again), so a later start with the previous key alone is refused.
    pub fn record_check(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::write_private(&data_dir.join(SEAL_CHECK_FILE), &self.seal(CHECK_PLAINTEXT))
    }

    /// Checks (or, on a first start, records) that the data dir is sealed under this
    /// key (or, in a rotation, the previous one).
    fn check_data_dir(&self, flag: &str, path: &Path, data_dir: &Path) -> Result<(), SealError> {
        let check = data_dir.join(SEAL_CHECK_FILE);
        match std::fs::read_to_string(&check) {
            Ok(sealed) => {
                if self.open(sealed.trim()).ok().as_deref() != Some(CHECK_PLAINTEXT) {
                    return Err(SealError::WrongKey {
                        flag: flag.into(),
                        path: path.into(),
                        data_dir: data_dir.into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::write_private(&check, &self.seal(CHECK_PLAINTEXT)).map_err(|source| {
                    SealError::Write {
                        flag: flag.into(),
                        path: check.clone(),
                        source,
                    }
                })?;
            }
            Err(source) => {
                return Err(SealError::Read {
                    flag: flag.into(),
                    path: check,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Seals `plaintext`: `sealed-v1:` and base64 of a fresh nonce, the ciphertext and
    /// its tag.
    pub fn seal(&self, plaintext: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = random();
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::empty(),
                &mut buf,
            )
            .expect("AES-GCM sealing does not fail for in-memory buffers");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}", B64.encode(out))
    }

    /// Opens a value [`Sealer::seal`] made, under this key or, in a rotation, the
    /// previous one. A value that is not sealed at all (a key stored in clear by an older
    /// version) is refused with [`SealError::NotSealed`].
    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        match (self.open_own(sealed), &self.previous) {
            (Err(SealError::Open), Some(previous)) => previous.open_own(sealed),
            (r, _) => r,
        }
    }

    /// Opens a value under this key only.
    fn open_own(&self, sealed: &str) -> Result<String, SealError> {
        if !is_sealed(sealed) {
            return Err(SealError::NotSealed);
        }
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let mut buf = ct.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

/// Writes a new key file at `path` unless one exists: the key goes to a private temp
/// file first, then is linked into place, which fails when another process got there
/// first (that process's key then wins). Returns whether this call created it.
fn create_key_file(path: &Path) -> std::io::Result<bool> {
    create_key_file_with(path, &Sealer::generate_key_file())
}

/// [`create_key_file`] with given contents.
fn create_key_file_with(path: &Path, contents: &str) -> std::io::Result<bool> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        hex::encode(random::<4>())
    ));
    let tmp = PathBuf::from(tmp);
    crate::write_private(&tmp, contents)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A seal key inside the data dir would let a copy of the directory open itself: refused
/// (`flag` names the setting that gave `path`).
pub fn check_outside(flag: &str, path: &Path, data_dir: &Path) -> Result<(), SealError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if abs(path).starts_with(abs(data_dir)) {
        return Err(SealError::InDataDir {
            flag: flag.into(),
            path: path.into(),
            data_dir: data_dir.into(),
        });
    }
    Ok(())
}

/// Whether a stored value is sealed.
pub fn is_sealed(v: &str) -> bool {
    v.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_another_key() {
        let a = Sealer::new(&[7u8; 32]).unwrap();
        let b = Sealer::new(&[8u8; 32]).unwrap();
        let pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        let s = a.seal(pem);
        assert!(is_sealed(&s));
        assert!(!s.contains("PRIVATE KEY"), "{s}");
        assert_ne!(a.seal(pem), s, "fresh nonce each time");
        assert_eq!(a.open(&s).unwrap(), pem);
        assert!(matches!(b.open(&s), Err(SealError::Open)));
        assert!(matches!(a.open(pem), Err(SealError::NotSealed)));
        let mut damaged = s.clone();
        damaged.pop();
        assert!(a.open(&damaged).is_err());
        assert!(matches!(
            Sealer::new(&[1u8; 16]),
            Err(SealError::Length(16))
        ));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, Sealer::generate_key_file()).unwrap();
        Sealer::from_file("--seal-key-file", &p).unwrap();
        std::fs::write(&p, "abcd").unwrap();
        let e = Sealer::from_file("--seal-key-file", &p).unwrap_err();
        assert!(e.to_string().contains("--seal-key-file"), "{e}");
    }

    #[test]
    fn a_first_start_creates_the_key_and_later_starts_need_that_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let key = tmp.path().join("keys/seal.key");
        let flag = "--seal-key-file";

        let (s, created) = Sealer::load_or_create(flag, &key, &data).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(data.join(SEAL_CHECK_FILE).exists());
        let sealed = s.seal("x");

        // Again with the same key: opens what the first start sealed.
        let (s2, created) = Sealer::load_or_create(flag, &key, &data).unwrap();
        assert!(!created);
        assert_eq!(s2.open(&sealed).unwrap(), "x");

        // A wrong key: refused, naming the flag.
        let other = tmp.path().join("other.key");
        std::fs::write(&other, Sealer::generate_key_file()).unwrap();
        let e = Sealer::load_or_create(flag, &other, &data).unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(flag), "{e}");

        // A lost key: refused, not replaced by a new one.
        std::fs::remove_file(&key).unwrap();
        let e = Sealer::load_or_create(flag, &key, &data).unwrap_err();
        assert!(matches!(e, SealError::Missing { .. }), "{e}");
        assert!(!key.exists());

        // A key inside the data dir: refused.
        let e = Sealer::load_or_create(flag, &data.join("seal.key"), &data).unwrap_err();
        assert!(matches!(e, SealError::InDataDir { .. }), "{e}");
    }

    #[test]
    fn nodes_sharing_a_key_path_share_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("seal.key");
        let sealers: Vec<Sealer> = (0..4)
            .map(|i| {
                let data = tmp.path().join(format!("node-{i}"));
                std::fs::create_dir(&data).unwrap();
                Sealer::load_or_create("--seal-key-file", &key, &data)
                    .unwrap()
                    .0
            })
            .collect();
        let sealed = sealers[0].seal("shared");
        for s in &sealers {
            assert_eq!(s.open(&sealed).unwrap(), "shared");
        }
    }

    #[test]
    fn a_handed_key_is_installed_once_and_never_over_another() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = Sealer::new(&[7u8; 32]).unwrap();
        let path = tmp.path().join("seal.key");
        let data = tmp.path().join("data");
        let handed = cluster.key_file_contents();
        let e = Sealer::install_key_file("--seal-key-file", &data.join("k"), &data, &handed)
            .unwrap_err();
        assert!(matches!(e, SealError::InDataDir { .. }), "{e}");
        Sealer::install_key_file("--seal-key-file", &path, &data, &handed).unwrap();
        let installed = Sealer::from_file("--seal-key-file", &path).unwrap();
        assert_eq!(installed.open(&cluster.seal("x")).unwrap(), "x");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The same key again is fine; another key is refused and the file is kept.
        Sealer::install_key_file("--seal-key-file", &path, &data, &handed).unwrap();
        let other = Sealer::new(&[8u8; 32]).unwrap().key_file_contents();
        let e = Sealer::install_key_file("--seal-key-file", &path, &data, &other).unwrap_err();
        assert!(matches!(e, SealError::Mismatch { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), handed);
    }

    #[test]
    fn a_rotation_opens_both_keys_seals_under_the_new_and_reseals_the_old() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (old_path, new_path) = (tmp.path().join("old.key"), tmp.path().join("new.key"));
        let (flag, prev) = ("--seal-key-file", "--previous-seal-key-file");
        let (old, _) = Sealer::load_or_create(flag, &old_path, &data).unwrap();
        let under_old = old.seal("a key");

        // The new key must exist: every node needs the same one.
        let e = Sealer::load_rotating((flag, &new_path), (prev, &old_path), &data).unwrap_err();
        assert!(matches!(e, SealError::NewKeyMissing { .. }), "{e}");
        assert!(e.to_string().contains("causeway seal generate-key"), "{e}");
        // The same key twice is a mistake.
        let e = Sealer::load_rotating((flag, &old_path), (prev, &old_path), &data).unwrap_err();
        assert!(matches!(e, SealError::SamePrevious { .. }), "{e}");

        std::fs::write(&new_path, Sealer::generate_key_file()).unwrap();
        let both = Sealer::load_rotating((flag, &new_path), (prev, &old_path), &data).unwrap();
        assert_ne!(both.key_id(), old.key_id());
        assert_eq!(both.previous_key_id(), Some(old.key_id()));
        assert_eq!(both.key_id().len(), 16);
        // Opens what the old key sealed; seals under the new key only.
        assert_eq!(both.open(&under_old).unwrap(), "a key");
        assert_eq!(both.sealed_under(&under_old), SealedUnder::Previous);
        let fresh = both.seal("another");
        assert_eq!(both.sealed_under(&fresh), SealedUnder::Current);
        assert!(old.open(&fresh).is_err());
        // Sealing again: what was under the old key is under the new one; the rest stays.
        let resealed = both.reseal(&under_old).unwrap().expect("resealed");
        assert_eq!(both.sealed_under(&resealed), SealedUnder::Current);
        assert!(old.open(&resealed).is_err());
        assert_eq!(both.reseal(&fresh).unwrap(), None);
        let stranger = Sealer::new(&[9u8; 32]).unwrap().seal("x");
        assert_eq!(both.sealed_under(&stranger), SealedUnder::Unknown);
        assert!(both.reseal(&stranger).is_err());

        // Once the check is recorded under the new key, the new key alone opens the data
        // dir and the old one alone is refused.
        both.record_check(&data).unwrap();
        let (alone, created) = Sealer::load_or_create(flag, &new_path, &data).unwrap();
        assert!(!created && !alone.has_previous());
        let e = Sealer::load_or_create(flag, &old_path, &data).unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
        // A key that is neither is refused as before.
        let other = tmp.path().join("other.key");
        std::fs::write(&other, Sealer::generate_key_file()).unwrap();
        let e = Sealer::load_rotating((flag, &other), (prev, &old_path), &data).unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
    }
}
