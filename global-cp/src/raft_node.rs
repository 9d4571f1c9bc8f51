//! The Raft thread: owns the `RawNode`, drives ticks and the Ready loop, applies committed
//! entries to the state machine and answers the clients waiting on them.
//!
//! It runs on a dedicated OS thread because every Ready does synchronous RocksDB writes
//! (fsync), which must not block the async runtime. Everything else talks to it through
//! [`RaftHandle`], a channel.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::{oneshot, watch};

use crate::command::{ApplyError, Command, Envelope, Member, RequestId, WriteOutcome, encode};
use crate::store::{Store, StoreError};

/// Raft timing and log retention. The defaults give a leader failover well under a second.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// One Raft tick.
    pub tick: Duration,
    /// A follower that hears nothing from the leader for a random 1x..2x this many ticks
    /// starts an election.
    pub election_ticks: usize,
    /// The leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// Compact the log once it holds more than this many applied entries...
    pub compact_threshold: u64,
    /// ...keeping this many so briefly lagging followers catch up without a snapshot.
    pub compact_keep: u64,
    /// A write not applied within this time fails with 503 (its outcome is then unknown).
    pub proposal_timeout: Duration,
    /// The data dir whose free space is watched ([`causeway_disk`]); `None` watches
    /// nothing (simulations).
    pub disk_dir: Option<std::path::PathBuf>,
    /// Under this much free space, proposals are refused.
    pub disk_reserve_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick: Duration::from_millis(50),
            election_ticks: 8,
            heartbeat_ticks: 2,
            compact_threshold: 10_000,
            compact_keep: 1_000,
            proposal_timeout: Duration::from_secs(5),
            disk_dir: None,
            disk_reserve_bytes: causeway_disk::DEFAULT_RESERVE_BYTES,
        }
    }
}

/// Why a write or a read did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    #[error("no leader is elected right now; retry shortly")]
    NoLeader,
    #[error(
        "the leader changed while the request was in flight; it may or may not have been applied, retry"
    )]
    LeaderChanged,
    #[error("timed out waiting for the cluster; the write may or may not have been applied, retry")]
    Timeout,
    #[error("raft refused the request: {0}")]
    Refused(String),
    #[error("this node is shutting down")]
    Stopped,
    /// The data dir's disk is under its reserve (see [`causeway_disk`]).
    #[error("{0}")]
    DiskLow(String),
}

/// A membership change.
#[derive(Debug, Clone)]
pub enum MemberChange {
    Add(Member),
    Remove(u64),
}

/// What the node currently knows about the cluster, for `GET /cluster` and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub first_index: u64,
    pub role: String,
    /// Voters and learners; on the leader, each with its matched index.
    pub progress: Vec<PeerProgress>,
    /// Bumped when cluster secrets or membership change, so watchers know to look.
    pub meta_epoch: u64,
    /// The data dir's free space; `low` while writes are refused.
    pub disk: causeway_disk::DiskReport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub voter: bool,
    pub matched: Option<u64>,
}

pub(crate) enum Msg {
    Raft(Box<Message>),
    Propose {
        cmd: Box<Command>,
        /// Who asked, when an API request did (written to the audit log).
        actor: Option<Box<crate::audit::Actor>>,
        reply: oneshot::Sender<Result<WriteOutcome, RaftError>>,
    },
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<WriteOutcome, RaftError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    Unreachable(u64),
    SnapshotSent(u64, bool),
    Stop,
}

/// Sends outbound Raft messages; implemented by the TCP transport and by the simulated
/// network in tests.
pub trait Outbox: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
    /// Tells the transport about a member's (new) Raft address.
    fn set_address(&mut self, id: u64, raft_addr: &str);
    fn remove(&mut self, id: u64);
}

/// The async side's handle to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Msg>,
    view: watch::Receiver<RaftView>,
    /// How long proposals take to be applied here (the node's metrics show it).
    proposals: prometheus_client::metrics::histogram::Histogram,
}

impl RaftHandle {
    pub(crate) fn sender(&self) -> mpsc::Sender<Msg> {
        self.tx.clone()
    }

    /// Proposes a command and waits until it is applied on this node.
    pub async fn propose(&self, cmd: Command) -> Result<WriteOutcome, RaftError> {
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose {
                cmd: Box::new(cmd),
                actor: crate::audit::current_actor().map(Box::new),
                reply,
            })
            .map_err(|_| RaftError::Stopped)?;
        let outcome = rx.await.map_err(|_| RaftError::Stopped)?;
        self.proposals.observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// The histogram of proposal latencies, for the node's metrics.
    pub(crate) fn proposals(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.proposals.clone()
    }

    pub async fn change_members(&self, change: MemberChange) -> Result<WriteOutcome, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::ChangeMembers { change, reply })
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Waits until this node has applied everything the leader had committed when the call
    /// was made (ReadIndex), so a read that follows is linearizable.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::ReadIndex { reply })
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    pub fn view(&self) -> watch::Receiver<RaftView> {
        self.view.clone()
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

struct Pending<T> {
    reply: oneshot::Sender<Result<T, RaftError>>,
    deadline: Instant,
}

/// Everything the Raft thread owns.
struct Driver<O: Outbox> {
    node: RawNode<Store>,
    store: Store,
    outbox: O,
    settings: RaftSettings,
    incarnation: u64,
    seq: u64,
    proposals: HashMap<u64, Pending<WriteOutcome>>,
    /// ReadIndex requests not yet confirmed, with when to ask again: a leader that has not
    /// committed an entry in its term drops them silently, so they are re-issued.
    reads: HashMap<u64, (Pending<()>, Instant)>,
    /// Reads the leader confirmed, waiting for this node to apply up to their index.
    confirmed_reads: Vec<(u64, oneshot::Sender<Result<(), RaftError>>)>,
    view: watch::Sender<RaftView>,
    leader: u64,
    meta_epoch: u64,
    disk: Option<causeway_disk::DiskWatch>,
}

/// Starts the Raft thread for node `id` over `store`; `make_outbox` gets the channel into
/// the Raft thread (for the transport's reports) and returns the outbox.
pub(crate) fn start_with<O: Outbox, E>(
    id: u64,
    store: Store,
    settings: RaftSettings,
    logger: slog::Logger,
    make_outbox: impl FnOnce(mpsc::Sender<Msg>) -> Result<O, E>,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>), StartError<E>> {
    let applied = store.applied_index()?;
    let cfg = raft_config(id, applied, &settings);
    let node = RawNode::new(&cfg, store, &logger).map_err(|e| StoreError::Corrupt {
        what: "raft state",
        reason: e.to_string(),
    })?;
    let (tx, rx) = mpsc::channel();
    let outbox = make_outbox(tx.clone()).map_err(StartError::Outbox)?;
    let (mut driver, view_rx) = Driver::new(node, outbox, settings);
    let thread = std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || driver.run(rx))
        .expect("spawning the raft thread");
    let handle = RaftHandle {
        tx,
        view: view_rx,
        proposals: crate::metrics::latency_histogram(),
    };
    Ok((handle, thread))
}

fn raft_config(id: u64, applied: u64, settings: &RaftSettings) -> raft::Config {
    raft::Config {
        id,
        election_tick: settings.election_ticks,
        heartbeat_tick: settings.heartbeat_ticks,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

/// Why the Raft thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("transport: {0}")]
    Outbox(E),
}

/// How long to wait for a ReadIndex confirmation before asking again.
const REREAD_AFTER: Duration = Duration::from_millis(200);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ConfContext {
    req: RequestId,
    member: Option<Member>,
}

impl<O: Outbox> Driver<O> {
    fn new(
        node: RawNode<Store>,
        outbox: O,
        settings: RaftSettings,
    ) -> (Driver<O>, watch::Receiver<RaftView>) {
        let (view_tx, view_rx) = watch::channel(RaftView {
            id: node.raft.id,
            ..Default::default()
        });
        let store = node.store().clone();
        let disk = settings
            .disk_dir
            .clone()
            .map(|d| causeway_disk::DiskWatch::new(d, settings.disk_reserve_bytes));
        let driver = Driver {
            node,
            store,
            outbox,
            settings,
            incarnation: rand::random(),
            seq: 0,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            confirmed_reads: Vec::new(),
            view: view_tx,
            leader: 0,
            meta_epoch: 0,
            disk,
        };
        (driver, view_rx)
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        // Tell the transport where the members we already know live.
        if let Ok(members) = self.store.members() {
            for m in members.values() {
                self.outbox.set_address(m.id, &m.raft_addr);
            }
        }
        let mut next_tick = Instant::now() + self.settings.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) => break,
                Ok(msg) => {
                    self.handle(msg);
                    // Take whatever else is queued so one Ready (one fsync) covers it all.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(Msg::Stop) => return,
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.settings.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.settings.tick;
                }
                self.expire(Instant::now());
                self.watch_disk(Instant::now());
                self.publish_view();
            }
            if let Err(e) = self.on_ready() {
                // Storage failed: continuing could lose acknowledged writes.
                tracing::error!(error = %e, "storage failure; this node stops serving");
                break;
            }
        }
        self.fail_all(RaftError::Stopped);
    }

    fn next_req(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            node: self.node.raft.id,
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }

    fn handle(&mut self, msg: Msg) {
        let deadline = Instant::now() + self.settings.proposal_timeout;
        match msg {
            Msg::Raft(m) => {
                // A follower's forwarded write: refused here too while the disk is low
                // (dropped: the follower's client times out and retries).
                if m.get_msg_type() == raft::eraftpb::MessageType::MsgPropose
                    && self.disk_refusal().is_some()
                {
                    tracing::debug!(from = m.from, "dropped a forwarded proposal: disk low");
                    return;
                }
                if let Err(e) = self.node.step(*m) {
                    tracing::debug!(error = %e, "dropped raft message");
                }
            }
            Msg::Propose { cmd, actor, reply } => {
                if let Some(why) = self.disk_refusal() {
                    let _ = reply.send(Err(RaftError::DiskLow(why)));
                    return;
                }
                let req = self.next_req();
                let env = Envelope {
                    req: Some(req),
                    at_ms: now_ms(),
                    cmd: *cmd,
                    actor: actor.map(|a| *a),
                };
                match self.node.propose(vec![], encode(&env)) {
                    Ok(()) => {
                        self.proposals.insert(req.seq, Pending { reply, deadline });
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Refused(e.to_string())));
                    }
                }
            }
            Msg::ChangeMembers { change, reply } => {
                let req = self.next_req();
                let mut cc = ConfChange::default();
                let member = match change {
                    MemberChange::Add(m) => {
                        cc.set_change_type(ConfChangeType::AddNode);
                        cc.node_id = m.id;
                        Some(m)
                    }
                    MemberChange::Remove(id) => {
                        cc.set_change_type(ConfChangeType::RemoveNode);
                        cc.node_id = id;
                        None
                    }
                };
                cc.context = encode(&ConfContext { req, member }).into();
                match self.node.propose_conf_change(vec![], cc) {
                    Ok(()) => {
                        self.proposals.insert(req.seq, Pending { reply, deadline });
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Refused(e.to_string())));
                    }
                }
            }
            Msg::ReadIndex { reply } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return;
                }
                let req = self.next_req();
                self.node.read_index(req.seq.to_be_bytes().to_vec());
                self.reads.insert(
                    req.seq,
                    (Pending { reply, deadline }, Instant::now() + REREAD_AFTER),
                );
            }
            Msg::Unreachable(id) => self.node.report_unreachable(id),
            Msg::SnapshotSent(id, ok) => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(id, status);
            }
            Msg::Stop => {}
        }
    }

    fn expire(&mut self, now: Instant) {
        self.proposals.retain(|_, p| {
            if p.deadline > now {
                return true;
            }
            let (tx, _) = oneshot::channel();
            let _ = std::mem::replace(&mut p.reply, tx).send(Err(RaftError::Timeout));
            false
        });
        let mut reissue = Vec::new();
        self.reads.retain(|seq, (p, again)| {
            if p.deadline > now {
                if *again <= now {
                    reissue.push(*seq);
                    *again = now + REREAD_AFTER;
                }
                return true;
            }
            let (tx, _) = oneshot::channel();
            let _ = std::mem::replace(&mut p.reply, tx).send(Err(RaftError::Timeout));
            false
        });
        for seq in reissue {
            self.node.read_index(seq.to_be_bytes().to_vec());
        }
    }

    fn fail_all(&mut self, err: RaftError) {
        for (_, p) in self.proposals.drain() {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, (p, _)) in self.reads.drain() {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, r) in self.confirmed_reads.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss()
            && ss.leader_id != self.leader
        {
            tracing::info!(leader = ss.leader_id, role = ?ss.raft_state, "leader changed");
            self.leader = ss.leader_id;
            // Proposals forwarded to the old leader are likely lost; let clients retry now
            // instead of waiting for the timeout.
            self.fail_all(RaftError::LeaderChanged);
        }
        if !ready.messages().is_empty() {
            self.outbox.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            tracing::info!(
                index = snap.get_metadata().index,
                "installing snapshot from leader"
            );
            self.store.apply_snapshot(&snap)?;
            for m in self.store.members()?.values() {
                self.outbox.set_address(m.id, &m.raft_addr);
            }
            self.on_meta_change();
        }
        for rs in ready.take_read_states() {
            if let Ok(b) = <[u8; 8]>::try_from(rs.request_ctx.as_slice())
                && let Some((p, _)) = self.reads.remove(&u64::from_be_bytes(b))
            {
                self.confirmed_reads.push((rs.index, p.reply));
            }
        }
        self.apply(ready.take_committed_entries())?;
        self.store.append(ready.entries(), ready.hs())?;
        if !ready.persisted_messages().is_empty() {
            self.outbox.send(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.outbox.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.finish_reads()?;
        self.maybe_compact()?;
        self.publish_view();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let me = self.node.raft.id;
        let mut batch = self.store.apply_batch();
        let mut replies = Vec::new();
        let mut meta_changed = false;
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => batch.skip(entry.index),
                EntryType::EntryNormal => {
                    let env: Envelope = match serde_json::from_slice(&entry.data) {
                        Ok(env) => env,
                        Err(e) => {
                            // Written by a newer version? Never guess: stop rather than diverge.
                            return Err(StoreError::Corrupt {
                                what: "log entry",
                                reason: format!("entry {}: {e}", entry.index),
                            });
                        }
                    };
                    meta_changed |= matches!(
                        env.cmd,
                        Command::InitCluster(_)
                            | Command::RegisterMember(_)
                            | Command::RotateZoneCa { .. }
                            | Command::RotateRaftCa { .. }
                            | Command::RotateApiCa { .. }
                    );
                    if let Command::RegisterMember(m) = &env.cmd
                        && m.id != me
                    {
                        self.outbox.set_address(m.id, &m.raft_addr);
                    }
                    let at = time::OffsetDateTime::from_unix_timestamp_nanos(
                        env.at_ms as i128 * 1_000_000,
                    )
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                    let audited = env
                        .actor
                        .map(|actor| (actor, crate::audit::describe(&env.cmd)));
                    let outcome = batch.apply(entry.index, at, env.cmd)?;
                    if let Some((actor, (action, target))) = audited {
                        batch.audit(entry.index, env.at_ms, actor, action, target, &outcome)?;
                    }
                    if let Some(req) = env
                        .req
                        .filter(|r| r.node == me && r.incarnation == self.incarnation)
                    {
                        replies.push((req.seq, outcome.map_err(RaftError::from)));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                        StoreError::Corrupt {
                            what: "conf change",
                            reason: e.to_string(),
                        }
                    })?;
                    let ctx: Option<ConfContext> = serde_json::from_slice(&cc.context).ok();
                    let cs = match self.node.apply_conf_change(&cc) {
                        Ok(cs) => cs,
                        Err(e) => {
                            tracing::warn!(error = %e, "conf change rejected");
                            batch.skip(entry.index);
                            if let Some(ctx) = ctx.filter(|c| {
                                c.req.node == me && c.req.incarnation == self.incarnation
                            }) {
                                replies.push((ctx.req.seq, Err(RaftError::Refused(e.to_string()))));
                            }
                            continue;
                        }
                    };
                    batch.set_conf_state(entry.index, &cs);
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            batch.remove_member(cc.node_id);
                            if cc.node_id == me {
                                tracing::warn!(
                                    "this node was removed from the cluster; it no longer votes"
                                );
                            } else {
                                self.outbox.remove(cc.node_id);
                            }
                        }
                        _ => {
                            if let Some(m) = ctx.as_ref().and_then(|c| c.member.as_ref()) {
                                batch.put_member(m);
                                if m.id != me {
                                    self.outbox.set_address(m.id, &m.raft_addr);
                                }
                            }
                        }
                    }
                    meta_changed = true;
                    tracing::info!(voters = ?cs.voters, "membership changed");
                    if let Some(ctx) =
                        ctx.filter(|c| c.req.node == me && c.req.incarnation == self.incarnation)
                    {
                        replies.push((ctx.req.seq, Ok(WriteOutcome::Done)));
                    }
                }
                EntryType::EntryConfChangeV2 => batch.skip(entry.index),
            }
        }
        batch.commit()?;
        for (seq, result) in replies {
            if let Some(p) = self.proposals.remove(&seq) {
                let _ = p.reply.send(result);
            }
        }
        if meta_changed {
            self.on_meta_change();
        }
        Ok(())
    }

    fn on_meta_change(&mut self) {
        self.meta_epoch += 1;
    }

    fn finish_reads(&mut self) -> Result<(), StoreError> {
        if self.confirmed_reads.is_empty() {
            return Ok(());
        }
        let applied = self.node.raft.raft_log.applied;
        let (done, waiting): (Vec<_>, Vec<_>) = self
            .confirmed_reads
            .drain(..)
            .partition(|(i, _)| *i <= applied);
        self.confirmed_reads = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let s = &self.settings;
        if self.store.log_len() <= s.compact_threshold {
            return Ok(());
        }
        let applied = self.node.raft.raft_log.applied;
        let to = applied.saturating_sub(s.compact_keep);
        if to >= self.store.first_log_index() {
            tracing::debug!(to, "compacting raft log");
            self.store.compact(to)?;
        }
        Ok(())
    }

    /// Measures the data dir's free space when due, and says when writes stop or resume.
    fn watch_disk(&mut self, now: Instant) {
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        match disk.poll(now) {
            Some(causeway_disk::DiskEvent::TurnedLow) => {
                let why = disk.report().refusal(&disk.dir);
                tracing::warn!("{why}");
            }
            Some(causeway_disk::DiskEvent::Recovered) => tracing::info!(
                free_mib = disk.report().free_bytes / (1024 * 1024),
                "the data dir's disk has space again: writes are taken"
            ),
            None => {}
        }
    }

    /// Why a write is refused now, if the disk is low.
    fn disk_refusal(&self) -> Option<String> {
        let disk = self.disk.as_ref()?;
        let report = disk.report();
        report.low.then(|| report.refusal(&disk.dir))
    }

    fn publish_view(&mut self) {
        let raft = &self.node.raft;
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let cs = raft.prs().conf().to_conf_state();
        let is_leader = raft.state == StateRole::Leader;
        let mut progress: Vec<PeerProgress> = cs
            .voters
            .iter()
            .map(|id| (*id, true))
            .chain(cs.learners.iter().map(|id| (*id, false)))
            .map(|(id, voter)| PeerProgress {
                id,
                voter,
                matched: if is_leader {
                    raft.prs().get(id).map(|p| p.matched)
                } else {
                    None
                },
            })
            .collect();
        progress.sort_by_key(|p| p.id);
        let view = RaftView {
            id: raft.id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            first_index: self.node.store().first_index().unwrap_or(0),
            role: role.to_string(),
            progress,
            meta_epoch: self.meta_epoch,
            disk: self.disk.as_ref().map(|d| d.report()).unwrap_or_default(),
        };
        self.view.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }
}

/// Forwards raft-rs's slog records to `tracing`, so one logger configuration covers all.
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let msg = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}"),
            _ => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

/// A logger for raft-rs that goes to `tracing`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests;
