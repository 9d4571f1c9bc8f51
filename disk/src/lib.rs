//! Free space under a data dir, so a control plane refuses writes before its disk is
//! full instead of failing in the middle of one.
//!
//! RocksDB that hits ENOSPC in its write-ahead log stops accepting writes until it is
//! reopened. So each control plane keeps a reserve: while the free space of its data
//! dir's file system is under it, new writes from users are refused with a clear error
//! (HTTP 507), and taken again as soon as space returns. Reads and proxy traffic go on,
//! and the writes that keep the system whole (a global node appending the leader's
//! entries, a zone applying global's policy) still proceed: the reserve is theirs.
//!
//! Like etcd's space quota alarm, but automatic both ways: no operator action beyond
//! freeing space. [`DiskWatch`] is the pure state machine (time and free space are
//! arguments); [`free_bytes`] is the one `statvfs`.
//!
//! [`purge_rocksdb_history`] is the other thing both control planes do to their store's
//! files: after a seal key rotation, no file may keep a value sealed under the old key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the free space is measured (one `statvfs`).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The default reserve: room for the entries in flight and a compaction's new files.
pub const DEFAULT_RESERVE_BYTES: u64 = 256 * 1024 * 1024;

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// What the node knows about its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskReport {
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    /// Under the reserve: writes are refused.
    pub low: bool,
}

impl DiskReport {
    /// The refusal a write gets while the disk is low.
    pub fn refusal(&self, dir: &Path) -> String {
        format!(
            "the disk of this node's data dir ({}) has {} MiB free, under its reserve of {} MiB (--disk-reserve-mib): writes are refused until space is freed, then taken again at once; reads and traffic go on",
            dir.display(),
            self.free_bytes / (1024 * 1024),
            self.reserve_bytes / (1024 * 1024)
        )
    }
}

/// The state machine of the check: fed measurements, it says when the disk turns low
/// or recovers. Pure (time and free space are arguments), so it is tested without a
/// full disk.
#[derive(Debug)]
pub struct DiskWatch {
    pub dir: PathBuf,
    reserve_bytes: u64,
    next_check: Option<Instant>,
    report: DiskReport,
}

/// A change worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskEvent {
    TurnedLow,
    Recovered,
}

impl DiskWatch {
    pub fn new(dir: PathBuf, reserve_bytes: u64) -> DiskWatch {
        DiskWatch {
            dir,
            reserve_bytes,
            next_check: None,
            report: DiskReport {
                reserve_bytes,
                ..DiskReport::default()
            },
        }
    }

    /// Whether a measurement is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_check.is_none_or(|t| now >= t)
    }

    /// Takes a measurement made at `now`.
    pub fn observe(&mut self, now: Instant, free_bytes: u64) -> Option<DiskEvent> {
        self.next_check = Some(now + CHECK_EVERY);
        let was_low = self.report.low;
        self.report.free_bytes = free_bytes;
        self.report.low = free_bytes < self.reserve_bytes;
        match (was_low, self.report.low) {
            (false, true) => Some(DiskEvent::TurnedLow),
            (true, false) => Some(DiskEvent::Recovered),
            _ => None,
        }
    }

    /// Measures when due; the event, if the state changed. A failed measurement keeps
    /// the last state (a transient error must not stop writes).
    pub fn poll(&mut self, now: Instant) -> Option<DiskEvent> {
        if !self.due(now) {
            return None;
        }
        match free_bytes(&self.dir) {
            Ok(free) => self.observe(now, free),
            Err(e) => {
                self.next_check = Some(now + CHECK_EVERY);
                tracing::debug!(dir = %self.dir.display(), error = %e, "measuring free disk space");
                None
            }
        }
    }

    pub fn report(&self) -> DiskReport {
        self.report
    }
}

/// Leaves no trace in RocksDB's files of values overwritten or deleted: flushes each of
/// `column_families` (and `default`; their memtables, with the write-ahead log that held
/// them), rewrites every file down to the bottom level, and syncs what log is left.
pub fn purge_rocksdb_history(
    db: &rocksdb::DB,
    column_families: &[&str],
) -> Result<(), rocksdb::Error> {
    let mut opts = rocksdb::CompactOptions::default();
    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for name in column_families.iter().copied().chain(["default"]) {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        db.flush_cf(cf)?;
        db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
    }
    db.flush_wal(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_under_the_reserve_and_resume_when_space_returns() {
        let t0 = Instant::now();
        let mut w = DiskWatch::new(PathBuf::from("/data"), 100);
        assert!(w.due(t0));
        assert_eq!(w.observe(t0, 500), None);
        assert!(!w.report().low);
        assert!(
            !w.due(t0 + Duration::from_millis(999)),
            "measured once a second"
        );
        assert!(w.due(t0 + CHECK_EVERY));
        assert_eq!(w.observe(t0 + CHECK_EVERY, 99), Some(DiskEvent::TurnedLow));
        assert!(w.report().low);
        assert_eq!(w.observe(t0 + CHECK_EVERY * 2, 50), None, "said once");
        assert_eq!(
            w.observe(t0 + CHECK_EVERY * 3, 100),
            Some(DiskEvent::Recovered)
        );
        assert!(!w.report().low);
        let why = DiskReport {
            free_bytes: 3 << 20,
            reserve_bytes: 256 << 20,
            low: true,
        }
        .refusal(Path::new("/data"));
        assert!(
            why.contains("/data") && why.contains("3 MiB free") && why.contains("256 MiB"),
            "{why}"
        );
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let mut w = DiskWatch::new(dir.path().to_path_buf(), u64::MAX);
        assert_eq!(w.poll(Instant::now()), Some(DiskEvent::TurnedLow));
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
