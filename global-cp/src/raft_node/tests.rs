//! Raft over a simulated network: real `Driver`s on real RocksDB stores, with messages
//! passed by the test, which can cut links, isolate nodes and drop messages. Time is
//! simulated too: the test decides when each node ticks.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use causeway_api::{Resource, ResourceKey};
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::oneshot;

use super::*;

type Queue = Arc<Mutex<Vec<Message>>>;

struct SimOutbox(Queue);

impl Outbox for SimOutbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().unwrap().extend(msgs);
    }
    fn set_address(&mut self, _: u64, _: &str) {}
    fn remove(&mut self, _: u64) {}
}

struct Sim {
    nodes: BTreeMap<u64, Driver<SimOutbox>>,
    queues: BTreeMap<u64, Queue>,
    /// Directed links that lose every message.
    cut: HashSet<(u64, u64)>,
    drop_ratio: f64,
    rng: rand::rngs::StdRng,
    _dirs: Vec<tempfile::TempDir>,
}

fn settings() -> RaftSettings {
    RaftSettings {
        compact_threshold: 40,
        compact_keep: 5,
        ..RaftSettings::default()
    }
}

fn mesh(name: &str) -> Resource {
    Resource::from_json(format!(r#"{{"type":"Mesh","name":"{name}"}}"#).as_bytes())
        .expect("valid mesh")
}

fn mesh_key(name: &str) -> ResourceKey {
    ResourceKey {
        kind: "Mesh".into(),
        mesh: String::new(),
        name: name.into(),
    }
}

fn put(name: &str) -> Command {
    Command::Put {
        resource: Box::new(mesh(name)),
        expected_version: None,
    }
}

impl Sim {
    fn new(n: u64) -> Sim {
        let voters: Vec<u64> = (1..=n).collect();
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            queues: BTreeMap::new(),
            cut: HashSet::new(),
            drop_ratio: 0.0,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            _dirs: Vec::new(),
        };
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            store.bootstrap(voters.clone()).unwrap();
            sim.add(id, store);
            sim._dirs.push(dir);
        }
        sim
    }

    fn add(&mut self, id: u64, store: Store) {
        let s = settings();
        let node = RawNode::new(
            &raft_config(id, store.applied_index().unwrap(), &s),
            store,
            &raft_logger(),
        )
        .unwrap();
        let q = Queue::default();
        let (driver, _view) = Driver::new(node, SimOutbox(q.clone()), s);
        self.nodes.insert(id, driver);
        self.queues.insert(id, q);
    }

    /// One round: every node ticks, processes its Ready, and every queued message is
    /// delivered unless its link is cut or it is dropped.
    fn round(&mut self) {
        for d in self.nodes.values_mut() {
            d.node.tick();
            d.on_ready().unwrap();
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        // Deliver until quiet, so one round completes request/response exchanges.
        for _ in 0..20 {
            let mut msgs = Vec::new();
            for q in self.queues.values() {
                msgs.append(&mut q.lock().unwrap());
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                if self.cut.contains(&(m.from, m.to)) {
                    continue;
                }
                if self.drop_ratio > 0.0 && self.rng.random_bool(self.drop_ratio) {
                    continue;
                }
                if let Some(d) = self.nodes.get_mut(&m.to) {
                    let _ = d.node.step(m);
                }
            }
            for d in self.nodes.values_mut() {
                d.on_ready().unwrap();
            }
        }
    }

    fn run_until(&mut self, what: &str, mut pred: impl FnMut(&Sim) -> bool) {
        for _ in 0..2000 {
            if pred(self) {
                return;
            }
            self.round();
        }
        panic!("simulation never reached: {what}");
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(id, d)| d.node.raft.state == StateRole::Leader && !self.isolated(**id))
            .map(|(id, _)| *id)
    }

    fn isolated(&self, id: u64) -> bool {
        self.nodes
            .keys()
            .filter(|o| **o != id)
            .all(|o| self.cut.contains(&(id, *o)))
    }

    fn elect(&mut self) -> u64 {
        self.run_until("a leader", |s| s.leader().is_some());
        self.leader().unwrap()
    }

    fn isolate(&mut self, id: u64) {
        for o in self.nodes.keys().copied().collect::<Vec<_>>() {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn propose(
        &mut self,
        id: u64,
        cmd: Command,
    ) -> oneshot::Receiver<Result<WriteOutcome, RaftError>> {
        let (reply, rx) = oneshot::channel();
        self.nodes.get_mut(&id).unwrap().handle(Msg::Propose {
            cmd: Box::new(cmd),
            actor: None,
            reply,
        });
        rx
    }

    /// Proposes and runs rounds until the answer arrives.
    fn write(&mut self, id: u64, cmd: Command) -> Result<WriteOutcome, RaftError> {
        let mut rx = self.propose(id, cmd);
        for _ in 0..200 {
            self.nodes.get_mut(&id).unwrap().on_ready().unwrap();
            self.deliver();
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            self.round();
        }
        panic!("write through node {id} never answered");
    }

    fn has(&self, id: u64, name: &str) -> bool {
        self.nodes[&id]
            .store
            .get(&mesh_key(name))
            .unwrap()
            .is_some()
    }
}

#[test]
fn a_write_reaches_every_node_and_its_version_is_the_raft_index() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let out = sim.write(leader, put("one")).unwrap();
    let WriteOutcome::Written {
        version,
        created: true,
    } = out
    else {
        panic!("unexpected outcome {out:?}")
    };
    sim.run_until("all nodes applied", |s| (1..=3).all(|id| s.has(id, "one")));
    for id in 1..=3 {
        let r = sim.nodes[&id].store.get(&mesh_key("one")).unwrap().unwrap();
        assert_eq!(r.version, Some(version), "node {id}");
        assert!(sim.nodes[&id].store.applied_index().unwrap() >= version);
    }
}

#[test]
fn a_follower_forwards_writes_to_the_leader() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let out = sim.write(follower, put("via-follower")).unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }), "{out:?}");
    assert!(sim.has(follower, "via-follower"));
}

#[test]
fn an_isolated_leader_cannot_commit_and_the_majority_elects_a_new_one() {
    let mut sim = Sim::new(3);
    let old = sim.elect();
    sim.write(old, put("before")).unwrap();
    sim.isolate(old);
    let mut lost = sim.propose(old, put("lost"));
    sim.run_until("a new leader among the majority", |s| {
        s.leader().is_some_and(|l| l != old)
    });
    let new = sim.leader().unwrap();
    sim.write(new, put("after")).unwrap();
    // The isolated leader never applied its write and never acknowledged it.
    assert!(!sim.has(old, "lost"));
    assert!(!matches!(lost.try_recv(), Ok(Ok(_))));
    sim.heal();
    sim.run_until("old leader catches up", |s| s.has(old, "after"));
    for _ in 0..50 {
        sim.round();
    }
    for id in 1..=3 {
        assert!(
            !sim.has(id, "lost"),
            "node {id} applied a write of a deposed leader"
        );
        assert!(sim.has(id, "before") && sim.has(id, "after"), "node {id}");
    }
    assert_ne!(sim.nodes[&old].node.raft.state, StateRole::Leader);
}

#[test]
fn a_minority_cannot_acknowledge_writes() {
    let mut sim = Sim::new(5);
    let leader = sim.elect();
    // Partition {leader, one follower} from the other three.
    let buddy = (1..=5).find(|id| *id != leader).unwrap();
    let minority = [leader, buddy];
    for a in 1..=5u64 {
        for b in 1..=5u64 {
            if minority.contains(&a) != minority.contains(&b) {
                sim.cut.insert((a, b));
            }
        }
    }
    let mut rx = sim.propose(leader, put("minority"));
    for _ in 0..100 {
        sim.round();
    }
    assert!(
        !matches!(rx.try_recv(), Ok(Ok(_))),
        "a minority acknowledged a write"
    );
    assert!((1..=5).all(|id| !sim.has(id, "minority")));
    // The majority side carries on.
    let majority_leader = (1..=5)
        .find(|id| !minority.contains(id) && sim.nodes[id].node.raft.state == StateRole::Leader);
    let ml = majority_leader.expect("the majority elected a leader");
    sim.write(ml, put("majority")).unwrap();
}

#[test]
fn writes_commit_despite_dropped_messages_and_all_nodes_agree() {
    let mut sim = Sim::new(3);
    sim.elect();
    sim.drop_ratio = 0.2;
    for i in 0..30 {
        loop {
            let Some(leader) = sim.leader() else {
                sim.round();
                continue;
            };
            match sim.write(leader, put(&format!("m{i}"))) {
                Ok(_) => break,
                Err(_) => sim.round(), // leader changed under drops: retry like a client
            }
        }
    }
    sim.drop_ratio = 0.0;
    sim.run_until("every node has every write", |s| {
        (1..=3).all(|id| (0..30).all(|i| s.has(id, &format!("m{i}"))))
    });
    let versions = |id: u64| -> Vec<Option<u64>> {
        (0..30)
            .map(|i| {
                sim.nodes[&id]
                    .store
                    .get(&mesh_key(&format!("m{i}")))
                    .unwrap()
                    .unwrap()
                    .version
            })
            .collect()
    };
    assert_eq!(versions(1), versions(2));
    assert_eq!(versions(2), versions(3));
}

#[test]
fn a_lagging_follower_catches_up_from_a_snapshot_after_compaction() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let lagger = (1..=3).find(|id| *id != leader).unwrap();
    sim.isolate(lagger);
    for i in 0..120 {
        sim.write(leader, put(&format!("s{i}"))).unwrap();
    }
    let first = sim.nodes[&leader].store.first_log_index();
    assert!(
        first > 50,
        "the leader compacted its log (first index {first})"
    );
    sim.heal();
    sim.run_until("the lagging follower installed a snapshot", |s| {
        (0..120).all(|i| s.has(lagger, &format!("s{i}")))
    });
    // Counted, for causeway_raft_snapshots_{built,installed}_total.
    let counts = |id: u64| {
        let c = sim.nodes[&id].store.snapshot_counts();
        (
            c.built.load(std::sync::atomic::Ordering::Relaxed),
            c.installed.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    assert!(counts(leader).0 >= 1, "{:?}", counts(leader));
    assert_eq!(counts(lagger).1, 1);
    // And keeps replicating normally afterwards.
    sim.write(leader, put("after-snapshot")).unwrap();
    sim.run_until("replication after the snapshot", |s| {
        s.has(lagger, "after-snapshot")
    });
}

#[test]
fn a_new_member_with_an_empty_store_joins_through_a_snapshot() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    for i in 0..60 {
        sim.write(leader, put(&format!("j{i}"))).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    sim.add(4, store);
    sim._dirs.push(dir);
    let (reply, mut rx) = oneshot::channel();
    sim.nodes
        .get_mut(&leader)
        .unwrap()
        .handle(Msg::ChangeMembers {
            change: MemberChange::Add(Member {
                id: 4,
                raft_addr: "127.0.0.1:1".into(),
                api_addr: "127.0.0.1:2".into(),
            }),
            reply,
        });
    sim.run_until("membership change applied", |_| {
        matches!(rx.try_recv(), Ok(Ok(_)))
    });
    sim.run_until("node 4 has all data", |s| {
        (0..60).all(|i| s.has(4, &format!("j{i}")))
    });
    assert!(
        sim.nodes[&leader]
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .contains(4)
    );
    // Remove node 2 (or 3 if 2 leads): it no longer counts as a voter anywhere.
    let gone = if leader == 2 { 3 } else { 2 };
    let (reply, _rx) = oneshot::channel();
    sim.nodes
        .get_mut(&leader)
        .unwrap()
        .handle(Msg::ChangeMembers {
            change: MemberChange::Remove(gone),
            reply,
        });
    sim.run_until("node removed", |s| {
        !s.nodes[&leader]
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .contains(gone)
    });
    assert!(
        !sim.nodes[&leader]
            .store
            .members()
            .unwrap()
            .contains_key(&gone)
    );
}

#[test]
fn optimistic_concurrency_rejects_a_stale_version() {
    let mut sim = Sim::new(3);
    let leader = sim.elect();
    let WriteOutcome::Written { version, .. } = sim.write(leader, put("occ")).unwrap() else {
        panic!()
    };
    let stale = Command::Put {
        resource: Box::new(mesh("occ")),
        expected_version: Some(version - 1),
    };
    assert_eq!(
        sim.write(leader, stale),
        Err(RaftError::Rejected(ApplyError::Conflict {
            expected: version - 1,
            found: version
        }))
    );
    let fresh = Command::Put {
        resource: Box::new(mesh("occ")),
        expected_version: Some(version),
    };
    assert!(sim.write(leader, fresh).is_ok());
    let create_only = Command::Put {
        resource: Box::new(mesh("occ")),
        expected_version: Some(0),
    };
    assert!(matches!(
        sim.write(leader, create_only),
        Err(RaftError::Rejected(ApplyError::Conflict { .. }))
    ));
}
