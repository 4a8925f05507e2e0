//! Small-farm scenarios on the deterministic simulator. Each one names the
//! behaviour it pins down; every overlay bug fix adds one here.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use ringmesh_overlay::membership::{Chunk, chunk_of};
use ringmesh_overlay::node::{GetOk, PutOk};
use ringmesh_overlay::sim::{self, Bootstrap, NetParams, Params, Sim, true_replicas};
use ringmesh_overlay::{
    Config, Entry, Event, Key, MemberState, Message, NodeId, OpError, ProtocolVersion, Record,
    RoutingMode,
};

fn template() -> Config {
    let mut c = Config::new(NodeId::from_u128(0));
    c.anti_entropy_interval = Duration::from_secs(10);
    c.sweep_interval = Duration::from_secs(5);
    c
}

fn new_sim(seed: u64) -> Sim {
    Sim::new(seed, NetParams::default(), template(), false)
}

fn key(i: usize) -> Key {
    Key::hash(format!("sip:user{i}@example.com").as_bytes())
}

/// Runs until the operation tagged `tag` finishes (at most 10 s).
fn wait(sim: &mut Sim, tag: u64) -> Event {
    for _ in 0..1000 {
        sim.run_for(Duration::from_millis(10));
        if let Some(d) = sim.take_done().into_iter().find(|d| d.tag == tag) {
            return d.event;
        }
    }
    panic!("operation {tag} did not finish");
}

fn put(
    sim: &mut Sim,
    at: NodeId,
    k: Key,
    entry_id: &str,
    value: &str,
) -> (Entry, Result<PutOk, OpError>) {
    let e = sim
        .entry(
            at,
            entry_id.as_bytes(),
            Bytes::from(value.to_string()),
            3_600_000,
        )
        .expect("node runs");
    sim.put(at, k, vec![e.clone()], 1);
    match wait(sim, 1) {
        Event::PutDone { result, .. } => (e, result),
        other => panic!("unexpected {other:?}"),
    }
}

fn get(sim: &mut Sim, at: NodeId, k: Key) -> Result<GetOk, OpError> {
    sim.get(at, k, 2);
    match wait(sim, 2) {
        Event::GetDone { result, .. } => result,
        other => panic!("unexpected {other:?}"),
    }
}

fn values(g: &GetOk) -> Vec<String> {
    g.entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect()
}

/// Farm of `n` joined through the protocol, converged.
fn joined_farm(sim: &mut Sim, n: usize) -> Vec<NodeId> {
    let first = sim.add_node();
    sim.bootstrap(first);
    let mut ids = vec![first];
    for _ in 1..n {
        let id = sim.add_node();
        sim.join(id, first);
        ids.push(id);
        sim.run_for(Duration::from_millis(50));
    }
    assert!(sim.run_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        Sim::converged
    ));
    ids
}

/// Writes `count` keys (one entry each) from random nodes; all must be acked.
fn load(sim: &mut Sim, ids: &[NodeId], count: usize) -> Vec<(Key, Entry)> {
    let mut out = Vec::new();
    for i in 0..count {
        let at = ids[i % ids.len()];
        let (e, r) = put(sim, at, key(i), "c1", &format!("v{i}"));
        r.expect("write acked");
        out.push((key(i), e));
    }
    out
}

/// Keys not held (at least at the written version) by every member of their
/// true replica set.
fn under_replicated(sim: &Sim, data: &[(Key, Entry)], k: usize) -> usize {
    let mut ring = sim.alive();
    ring.sort();
    data.iter()
        .filter(|(key, e)| {
            true_replicas(&ring, key, k).iter().any(|id| {
                sim.node(*id)
                    .and_then(|n| n.store().get(key))
                    .and_then(|r| r.get(&e.id))
                    .is_none_or(|x| x.hlc < e.hlc)
            })
        })
        .count()
}

#[test]
fn a_single_node_is_its_own_quorum_and_persists() {
    let mut sim = Sim::new(1, NetParams::default(), template(), true);
    let a = sim.add_node();
    sim.bootstrap(a);
    let (e, r) = put(&mut sim, a, key(1), "c1", "flow@a");
    assert_eq!(
        r.unwrap(),
        PutOk {
            acks: 1,
            needed: 1,
            hops: 0
        }
    );
    let g = get(&mut sim, a, key(1)).unwrap();
    assert_eq!(g.entries, vec![e]);
    assert_eq!((g.hops, g.responder, g.replicas.clone()), (0, a, vec![a]));
    // A crash and restart from the data directory keeps the binding.
    sim.kill(a);
    sim.restart(a, None);
    let g = get(&mut sim, a, key(1)).unwrap();
    assert_eq!(values(&g), vec!["flow@a"]);
}

#[test]
fn two_nodes_need_both_then_one_after_a_failure() {
    let mut sim = new_sim(2);
    let ids = joined_farm(&mut sim, 2);
    let (_, r) = put(&mut sim, ids[0], key(1), "c1", "x");
    let ok = r.unwrap();
    assert_eq!((ok.acks, ok.needed), (2, 2), "majority of two is two");
    for id in &ids {
        assert!(sim.node(*id).unwrap().store().get(&key(1)).is_some());
    }
    sim.kill(ids[1]);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(
        sim.node(ids[0]).unwrap().member(ids[1]).unwrap().state,
        MemberState::Dead
    );
    let ok = put(&mut sim, ids[0], key(2), "c1", "y").1.unwrap();
    assert_eq!(ok.needed, 1, "a lone survivor is its own quorum");
    assert_eq!(values(&get(&mut sim, ids[0], key(1)).unwrap()), vec!["x"]);
}

#[test]
fn more_replicas_configured_than_nodes() {
    let mut t = template();
    t.replicas = 5;
    let mut sim = Sim::new(3, NetParams::default(), t, false);
    let ids = sim.start_farm(3);
    let ok = put(&mut sim, ids[0], key(7), "c1", "v").1.unwrap();
    assert_eq!(ok.needed, 2, "majority of min(5, 3)");
    sim.run_for(Duration::from_secs(1));
    for id in &ids {
        assert!(
            sim.node(*id).unwrap().store().get(&key(7)).is_some(),
            "every node is a replica"
        );
    }
    let g = get(&mut sim, ids[2], key(7)).unwrap();
    assert_eq!(g.replicas.len(), 3);
}

#[test]
fn a_joining_node_receives_its_range_before_it_owns_it() {
    let mut sim = new_sim(4);
    let ids = sim.start_farm(10);
    let data = load(&mut sim, &ids, 300);
    let j = sim.add_node();
    sim.join(j, ids[3]);
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| {
            s.node(j)
                .is_some_and(|n| n.phase() == ringmesh_overlay::Phase::Alive)
        })
    );
    // The instant it is alive it holds every key it replicates: no
    // anti-entropy has run yet, this is the hand-off alone.
    let mut ring = sim.alive();
    ring.sort();
    let mine: Vec<&(Key, Entry)> = data
        .iter()
        .filter(|(k, _)| true_replicas(&ring, k, 3).contains(&j))
        .collect();
    assert!(!mine.is_empty(), "the joiner replicates some keys");
    let store = sim.node(j).unwrap().store();
    for (k, e) in &mine {
        assert_eq!(store.get(k).and_then(|r| r.get(&e.id)), Some(e));
    }
    // Reads of its keys from anywhere are answered, by it when it is primary.
    for (k, e) in mine.iter().take(20) {
        let g = get(&mut sim, ids[0], *k).unwrap();
        assert_eq!(g.entries, vec![e.clone()]);
    }
    // Old replicas hand their now-foreign copies away: after a sweep, no
    // node holds keys outside its range.
    sim.run_for(Duration::from_secs(20));
    assert_eq!(under_replicated(&sim, &data, 3), 0);
    let held: usize = sim
        .alive()
        .iter()
        .map(|id| sim.node(*id).unwrap().store().len())
        .sum();
    assert_eq!(held, 3 * data.len(), "exactly k copies of each key");
}

#[test]
fn a_graceful_leave_hands_everything_off_before_exit() {
    let mut sim = new_sim(5);
    let ids = sim.start_farm(10);
    let data = load(&mut sim, &ids, 300);
    let leaver = ids[4];
    let held = sim.node(leaver).unwrap().store().len();
    assert!(held > 0);
    sim.leave(leaver);
    assert!(
        sim.run_until(Duration::from_secs(15), Duration::from_millis(10), |s| {
            s.node(leaver).is_none()
        })
    );
    // Right after it left — before failure detection or anti-entropy could
    // have helped — every key is on its full new replica set.
    assert_eq!(under_replicated(&sim, &data, 3), 0);
    sim.run_for(Duration::from_secs(2));
    for id in sim.alive() {
        let n = sim.node(id).unwrap();
        assert_eq!(n.member(leaver).unwrap().state, MemberState::Left);
        assert_eq!(n.stats().failures_detected, 0, "a leave is not a failure");
    }
}

#[test]
fn a_crash_is_detected_and_replicas_return_to_k() {
    let mut sim = new_sim(6);
    let ids = sim.start_farm(10);
    let data = load(&mut sim, &ids, 300);
    sim.kill(ids[6]);
    assert!(under_replicated(&sim, &data, 3) > 0);
    assert!(
        sim.run_until(Duration::from_secs(30), Duration::from_millis(500), |s| {
            s.converged() && under_replicated(s, &data, 3) == 0
        })
    );
    let repaired: u64 = sim
        .alive()
        .iter()
        .map(|id| sim.node(*id).unwrap().stats().repaired_records)
        .sum();
    assert!(repaired > 0, "the new replicas were filled by repair");
    for (k, e) in data.iter().take(50) {
        assert_eq!(get(&mut sim, ids[0], *k).unwrap().entries, vec![e.clone()]);
    }
}

#[test]
fn concurrent_writes_from_two_supernodes_converge() {
    let mut sim = new_sim(7);
    let ids = sim.start_farm(20);
    let k = key(99);
    let (a, b) = (ids[3], ids[11]);
    // Same contact written through two edges at the same instant, plus one
    // contact each.
    let ea = sim
        .entry(a, b"contact", Bytes::from_static(b"via-a"), 3_600_000)
        .unwrap();
    let eb = sim
        .entry(b, b"contact", Bytes::from_static(b"via-b"), 3_600_000)
        .unwrap();
    let xa = sim
        .entry(a, b"only-a", Bytes::from_static(b"a"), 3_600_000)
        .unwrap();
    let xb = sim
        .entry(b, b"only-b", Bytes::from_static(b"b"), 3_600_000)
        .unwrap();
    sim.put(a, k, vec![ea.clone(), xa], 10);
    sim.put(b, k, vec![eb.clone(), xb], 11);
    sim.run_for(Duration::from_secs(2));
    let done = sim.take_done();
    assert!(
        done.iter()
            .all(|d| matches!(&d.event, Event::PutDone { result: Ok(_), .. }))
    );
    let winner = if (ea.hlc, ea.origin) > (eb.hlc, eb.origin) {
        &ea
    } else {
        &eb
    };
    let mut ring = sim.alive();
    ring.sort();
    let replicas = true_replicas(&ring, &k, 3);
    let first = sim
        .node(replicas[0])
        .unwrap()
        .store()
        .get(&k)
        .unwrap()
        .clone();
    for r in &replicas {
        assert_eq!(
            sim.node(*r).unwrap().store().get(&k),
            Some(&first),
            "replicas identical"
        );
    }
    assert_eq!(first.get(b"contact"), Some(winner));
    assert_eq!(first.len(), 3);
    for at in [a, b, ids[0]] {
        let g = get(&mut sim, at, k).unwrap();
        assert_eq!(
            g.entries,
            first.entries().to_vec(),
            "every reader sees the same"
        );
    }
}

#[test]
fn stale_views_cost_hops_never_wrong_answers() {
    let mut sim = new_sim(8);
    let ids = sim.start_farm(20);
    let data = load(&mut sim, &ids, 200);
    // One member stops hearing membership news (its gossip is lost)...
    let stale = ids[9];
    sim.block_kinds_to(stale, &["gossip", "view_chunks", "join_accept"]);
    let before = sim.node(stale).unwrap().view().root();
    // ...while ten nodes join and one crashes.
    for _ in 0..10 {
        let j = sim.add_node();
        sim.join(j, ids[0]);
        sim.run_for(Duration::from_millis(300));
    }
    let dead = ids[(0..20).find(|i| *i != 9 && *i != 0).unwrap()];
    sim.kill(dead);
    sim.run_for(Duration::from_secs(30));
    let view = sim.node(stale).unwrap().view();
    assert_eq!(view.root(), before, "its view is stale");
    assert_eq!(
        view.get(dead).unwrap().state,
        MemberState::Alive,
        "it still believes in the dead node"
    );
    assert!(sim.node(ids[0]).unwrap().view().routable_len() == 29);
    // Every read through it is still right.
    for (i, (k, _)) in data.iter().enumerate() {
        sim.get(stale, *k, 1000 + i as u64);
    }
    sim.run_for(Duration::from_secs(6));
    let done = sim.take_done();
    assert_eq!(done.len(), data.len());
    let mut multi_hop = 0;
    let mut dead_owner_answered = 0;
    for d in done {
        let (k, e) = &data[(d.tag - 1000) as usize];
        let believed_owner = sim.node(stale).unwrap().route(k).replicas[0];
        let Event::GetDone { result: Ok(g), .. } = d.event else {
            panic!("read of {k:?} failed: {:?}", d.event)
        };
        assert_eq!(g.entries, vec![e.clone()], "right answer for {k:?}");
        if g.hops > 1 {
            multi_hop += 1;
        }
        if believed_owner == dead {
            assert_ne!(g.responder, dead);
            dead_owner_answered += 1;
        }
    }
    assert!(multi_hop > 0, "some reads needed forwarding");
    assert!(
        dead_owner_answered > 0,
        "keys of the node it wrongly believes alive were read"
    );
}

#[test]
fn a_partition_heals_and_both_sides_converge() {
    let mut sim = new_sim(9);
    let ids = sim.start_farm(12);
    let data = load(&mut sim, &ids, 100);
    let (left, right) = ids.split_at(4);
    sim.partition(left);
    sim.run_for(Duration::from_secs(20));
    // Each side carries on alone: writes on both sides, including the same
    // contact of the same AOR.
    let k = key(500);
    let (el, rl) = put(&mut sim, left[0], k, "contact", "left");
    let (er, rr) = put(&mut sim, right[0], k, "contact", "right");
    rl.expect("left side writes with its own quorum");
    rr.expect("right side writes with its own quorum");
    let (e_l, r1) = put(&mut sim, left[1], key(501), "c1", "only-left");
    let (e_r, r2) = put(&mut sim, right[1], key(502), "c1", "only-right");
    r1.unwrap();
    r2.unwrap();
    sim.heal();
    let mut all = data.clone();
    all.push((key(501), e_l));
    all.push((key(502), e_r));
    assert!(
        sim.run_until(Duration::from_secs(120), Duration::from_millis(500), |s| {
            s.converged() && under_replicated(s, &all, 3) == 0
        }),
        "views and replicas converge after the heal"
    );
    let winner = if (el.hlc, el.origin) > (er.hlc, er.origin) {
        "left"
    } else {
        "right"
    };
    for at in [left[2], right[2]] {
        assert_eq!(values(&get(&mut sim, at, k).unwrap()), vec![winner]);
        for (key, e) in &all {
            assert_eq!(get(&mut sim, at, *key).unwrap().entries, vec![e.clone()]);
        }
    }
    let refuted: u64 = ids
        .iter()
        .map(|id| sim.node(*id).unwrap().stats().refutations)
        .sum();
    assert!(
        refuted > 0,
        "nodes declared dead across the partition refuted it"
    );
}

#[test]
fn a_write_without_quorum_fails_and_loses_nothing_stored() {
    let mut t = template();
    // Slow failure detection, so the write meets two unreachable replicas.
    t.failure_timeout = Duration::from_secs(30);
    t.probe_timeout = Duration::from_secs(30);
    let mut sim = Sim::new(10, NetParams::default(), t, false);
    let ids = sim.start_farm(3);
    let (before, r) = put(&mut sim, ids[0], key(1), "c1", "before");
    r.unwrap();
    sim.kill(ids[1]);
    sim.kill(ids[2]);
    let (_, r) = put(&mut sim, ids[0], key(2), "c1", "after");
    assert_eq!(r.unwrap_err(), OpError::Quorum { acks: 1, needed: 2 });
    // What was acknowledged before is still served.
    let g = get(&mut sim, ids[0], key(1)).unwrap();
    assert_eq!(g.entries, vec![before]);
}

#[test]
fn every_node_restarting_at_once_loses_no_binding() {
    let mut sim = Sim::new(11, NetParams::default(), template(), true);
    let ids = joined_farm(&mut sim, 8);
    let data = load(&mut sim, &ids, 200);
    for id in &ids {
        sim.kill(*id);
    }
    // One node died in the middle of an append.
    sim.tear_disk(ids[3], b"RM\x01\x00\xff\xff");
    sim.run_for(Duration::from_secs(1));
    sim.restart(ids[0], None);
    for id in &ids[1..] {
        sim.restart(*id, Some(ids[0]));
        sim.run_for(Duration::from_millis(200));
    }
    assert!(
        sim.run_until(Duration::from_secs(120), Duration::from_millis(500), |s| {
            s.converged() && under_replicated(s, &data, 3) == 0
        })
    );
    for (k, e) in &data {
        assert_eq!(get(&mut sim, ids[5], *k).unwrap().entries, vec![e.clone()]);
    }
}

/// The way a whole farm comes back after a power cut: every node restarts
/// at the same moment and joins through all the others (which are joining
/// too, so nobody accepts), until the one allowed to found the ring gives up
/// on its seeds and bootstraps; the rest then join it, one hand-off each.
#[test]
fn a_farm_restarting_at_once_through_each_other_converges() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, NetParams::default(), template(), true);
        let ids = joined_farm(&mut sim, 5);
        let data = load(&mut sim, &ids, 300);
        for id in &ids {
            sim.kill(*id);
        }
        sim.run_for(Duration::from_millis(100));
        for id in &ids {
            let others: Vec<NodeId> = ids.iter().copied().filter(|o| o != id).collect();
            sim.restart_via(*id, &others);
            let gap = Duration::from_millis(sim.rng().random_range(0..300));
            sim.run_for(gap);
        }
        sim.run_for(Duration::from_secs(2));
        sim.bootstrap(ids[0]);
        let ok = sim.run_until(Duration::from_secs(120), Duration::from_millis(500), |s| {
            s.converged() && under_replicated(s, &data, 3) == 0
        });
        assert!(
            ok,
            "seed {seed}: alive {:?} of {}",
            sim.alive().len(),
            ids.len()
        );
    }
}

#[test]
fn lossy_network_still_completes_every_operation() {
    let net = NetParams {
        loss: 0.02,
        ..NetParams::default()
    };
    let mut sim = Sim::new(12, net, template(), false);
    let ids = sim.start_farm(30);
    let data = load(&mut sim, &ids, 150);
    for (i, (k, e)) in data.iter().enumerate() {
        let g = get(&mut sim, ids[(i * 7) % ids.len()], *k).unwrap();
        assert_eq!(g.entries, vec![e.clone()]);
    }
    let retries: u64 = ids
        .iter()
        .map(|id| sim.node(*id).unwrap().stats().retries)
        .sum();
    assert!(retries > 0, "loss was felt and retried");
}

#[test]
fn nodes_one_minor_apart_interoperate_on_the_wire() {
    let net = NetParams {
        wire: true,
        ..NetParams::default()
    };
    let mut sim = Sim::new(13, net, template(), false);
    let mut ids = Vec::new();
    for i in 0..8u128 {
        let id = NodeId::from_u128((i + 1) << 124);
        let minor = ProtocolVersion::CURRENT.minor + (i % 2) as u16;
        ids.push(sim.add_node_with(
            id,
            ProtocolVersion::new(ProtocolVersion::CURRENT.major, minor),
        ));
    }
    sim.bootstrap(ids[1]);
    for id in &ids {
        if *id != ids[1] {
            sim.join(*id, ids[1]);
        }
        sim.run_for(Duration::from_millis(100));
    }
    assert!(sim.run_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        Sim::converged
    ));
    let data = load(&mut sim, &ids, 40);
    for (i, (k, e)) in data.iter().enumerate() {
        assert_eq!(
            get(&mut sim, ids[(i + 3) % 8], *k).unwrap().entries,
            vec![e.clone()]
        );
    }
    assert_eq!(sim.net_stats.refused, 0);
}

#[test]
fn finger_routing_reaches_the_owner_in_several_hops() {
    let mut p = Params::new(64, 500);
    p.node.routing = RoutingMode::Fingers;
    p.verify_rate = 5_000;
    let r = sim::run(&p);
    assert_eq!(r.lookups, 500);
    assert_eq!(r.lookups_ok, 500);
    assert!(r.hops_p50 >= 2, "greedy routing takes several hops: {r}");
    assert!(r.hops_max <= 8, "within about log2(64) + 1: {r}");
}

#[test]
fn same_seed_same_report() {
    let mut p = Params::new(40, 400);
    p.bootstrap = Bootstrap::Join {
        interval: Duration::from_millis(50),
    };
    p.churn.kills = 2;
    p.churn.joins = 2;
    p.churn.leaves = 1;
    p.net.loss = 0.005;
    let a = sim::run(&p);
    let b = sim::run(&p);
    assert_eq!(a.to_json(), b.to_json());
    p.seed = 2;
    assert_ne!(sim::run(&p).to_json(), a.to_json(), "the seed matters");
}

#[test]
fn a_hundred_node_farm_split_thirty_seventy_heals() {
    let mut sim = new_sim(14);
    let ids = sim.start_farm(100);
    let mut data = load(&mut sim, &ids, 300);
    let (minority, majority) = ids.split_at(30);
    sim.partition(minority);
    // Long enough for each side to declare the other dead and re-replicate.
    sim.run_for(Duration::from_secs(40));
    let side_view = sim.node(minority[0]).unwrap().view().routable_len();
    assert_eq!(side_view, 30, "the minority sees only itself");
    for i in 0..60 {
        let at = if i % 2 == 0 {
            minority[i % 30]
        } else {
            majority[i % 70]
        };
        let (e, r) = put(&mut sim, at, key(1000 + i), "c1", &format!("split{i}"));
        r.expect("each side keeps writing");
        data.push((key(1000 + i), e));
    }
    sim.heal();
    assert!(
        sim.run_until(Duration::from_secs(180), Duration::from_secs(1), |s| {
            s.converged() && under_replicated(s, &data, 3) == 0
        }),
        "one ring again with every key on its replicas"
    );
    let stats = sim.total_stats();
    assert!(stats.refutations >= 30, "the minority refuted its death");
    for (i, (k, e)) in data.iter().enumerate().step_by(7) {
        assert_eq!(
            get(&mut sim, ids[(i * 13) % 100], *k).unwrap().entries,
            vec![e.clone()]
        );
    }
}

/// A simulator whose nodes enforce the replica-set rule on writes soon
/// after a membership change (the default waits two minutes).
fn strict_sim(seed: u64) -> Sim {
    let mut c = template();
    c.view_lag_ms = 2_000;
    Sim::new(seed, NetParams::default(), c, false)
}

/// `attacker`'s chunk holding `victim`, with the victim's record replaced.
fn forged_chunk(sim: &Sim, attacker: NodeId, victim: NodeId, incarnation: u64) -> Chunk {
    let i = chunk_of(victim);
    let members = sim.node(attacker).unwrap().view().chunk(i).members();
    let forged = members
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.id == victim {
                m.incarnation = incarnation;
                m.state = MemberState::Dead;
            }
            m
        })
        .collect();
    Chunk::new(i as u32, forged).unwrap()
}

#[test]
fn a_member_gossiping_its_victim_dead_cannot_evict_it() {
    let mut sim = new_sim(31);
    let ids = joined_farm(&mut sim, 8);
    let data = load(&mut sim, &ids, 60);
    let (attacker, victim) = (ids[0], ids[3]);
    let known = sim.node(victim).unwrap().status().incarnation;
    let gossip_to_all = |sim: &mut Sim, chunk: Chunk| {
        for &to in &ids[1..] {
            sim.inject(
                attacker,
                to,
                Message::Gossip {
                    chunks: vec![chunk.clone()],
                },
            );
        }
    };
    let victim_alive_everywhere = |sim: &Sim| {
        ids.iter().all(|n| {
            sim.node(*n).unwrap().view().get(victim).map(|m| m.state) == Some(MemberState::Alive)
        })
    };

    // A death within the incarnation bound is taken, then refuted.
    let within = known + 1_000;
    let chunk = forged_chunk(&sim, attacker, victim, within);
    gossip_to_all(&mut sim, chunk);
    sim.run_for(Duration::from_millis(500)); // delivered
    assert!(
        sim.run_until(Duration::from_secs(20), Duration::from_millis(200), |s| {
            s.converged() && victim_alive_everywhere(s)
        })
    );
    assert_eq!(sim.node(victim).unwrap().status().incarnation, within + 1);

    // A death at u64::MAX is refused everywhere: nothing could outrank it.
    let chunk = forged_chunk(&sim, attacker, victim, u64::MAX);
    gossip_to_all(&mut sim, chunk);
    sim.run_for(Duration::from_secs(20));
    assert!(victim_alive_everywhere(&sim));
    assert!(sim.converged());
    assert_eq!(sim.node(victim).unwrap().status().incarnation, within + 1);
    let refused = sim.total_stats().refused_member_records;
    assert!(
        refused >= 7,
        "each other node refused the forgery: {refused}"
    );
    for (k, e) in &data {
        assert_eq!(get(&mut sim, victim, *k).unwrap().entries, vec![e.clone()]);
    }
}

#[test]
fn records_written_from_outside_their_replica_set_are_dropped_and_counted() {
    let mut sim = strict_sim(32);
    let ids = joined_farm(&mut sim, 8);
    sim.run_for(Duration::from_secs(5)); // past the view lag
    let mut ring = sim.alive();
    ring.sort();
    let k = key(7);
    let replicas = sim.true_replicas(&k, &ring);
    let outsider = *ids.iter().find(|n| !replicas.contains(n)).unwrap();
    let forged = sim
        .entry(
            outsider,
            b"forged",
            Bytes::from_static(b"sip:evil@10.6.6.6"),
            3_600_000,
        )
        .unwrap();
    let record = Record::from_entries([forged.clone()]);
    for &r in &replicas {
        sim.inject(
            outsider,
            r,
            Message::Replicate {
                tag: 1,
                key: k,
                entries: vec![forged.clone()],
            },
        );
        sim.inject(
            outsider,
            r,
            Message::AeRecords {
                session: 1,
                records: vec![(k, record.clone())],
                want: vec![],
            },
        );
        sim.inject(
            outsider,
            r,
            Message::HandoffBatch {
                tag: 1,
                records: vec![(k, record.clone())],
                next_after: None,
                push: true,
            },
        );
    }
    sim.run_for(Duration::from_secs(2));
    for &r in &replicas {
        let n = sim.node(r).unwrap();
        assert!(n.store().get(&k).is_none(), "{r} stored the forged record");
        assert_eq!(n.stats().refused_not_replica, 3, "{r}");
    }
    // The same write from a replica is taken: the rule is about the sender.
    let honest = sim
        .entry(
            replicas[1],
            b"honest",
            Bytes::from_static(b"sip:alice@10.0.0.1"),
            3_600_000,
        )
        .unwrap();
    sim.inject(
        replicas[1],
        replicas[0],
        Message::Replicate {
            tag: 2,
            key: k,
            entries: vec![honest.clone()],
        },
    );
    sim.run_for(Duration::from_secs(1));
    let held = sim.node(replicas[0]).unwrap().store().get(&k).cloned();
    assert_eq!(held.map(|r| r.entries().to_vec()), Some(vec![honest]));
}

#[test]
fn entries_stamped_far_ahead_or_living_forever_are_refused() {
    let mut sim = new_sim(33);
    let ids = joined_farm(&mut sim, 5);
    let k = key(3);
    let wall = sim.wall_ms(ids[0]);
    let day = 86_400_000;
    // A stamp a day ahead would win every later write; an expiry a year
    // ahead would keep a binding forever.
    let ahead = Entry::new(
        Bytes::from_static(b"c1"),
        Bytes::from_static(b"ahead"),
        ringmesh_overlay::Hlc::new(wall + day, 0),
        ids[0],
        wall + 3_600_000,
    );
    let forever = Entry::new(
        Bytes::from_static(b"c2"),
        Bytes::from_static(b"forever"),
        ringmesh_overlay::Hlc::new(wall, 0),
        ids[0],
        wall + 365 * day,
    );
    sim.put(ids[0], k, vec![ahead, forever], 9);
    let _ = wait(&mut sim, 9);
    assert!(sim.total_stats().refused_entries >= 2);
    let (e, r) = put(&mut sim, ids[1], k, "c1", "honest");
    r.expect("an honest write to the same entry is acked");
    assert_eq!(get(&mut sim, ids[2], k).unwrap().entries, vec![e]);
}

/// An overloaded node's mark reaches every member at once, is renewed
/// while the load lasts, is lifted when it ends, and expires by itself when
/// the node dies overloaded.
#[test]
fn load_marks_spread_renew_lift_and_expire() {
    let mut sim = new_sim(41);
    let ids = joined_farm(&mut sim, 4);
    let (hot, others) = (ids[1], [ids[0], ids[2], ids[3]]);
    let marked = |sim: &Sim, at: NodeId| {
        sim.node(at)
            .unwrap()
            .overloaded(sim.now())
            .any(|id| id == hot)
    };
    sim.set_load(hot, 1);
    sim.run_for(Duration::from_millis(100));
    for o in others {
        assert!(marked(&sim, o), "{o:?} heard that {hot:?} is overloaded");
    }
    // Renewed every ping interval: still marked long after the first word.
    sim.run_for(Duration::from_secs(10));
    assert!(others.iter().all(|o| marked(&sim, *o)));
    sim.set_load(hot, 0);
    sim.run_for(Duration::from_millis(100));
    assert!(others.iter().all(|o| !marked(&sim, *o)), "lifted at once");
    // Dead while overloaded: the mark outlives it by three intervals at most.
    sim.set_load(hot, 1);
    sim.run_for(Duration::from_millis(100));
    assert!(others.iter().all(|o| marked(&sim, *o)));
    sim.kill(hot);
    sim.run_for(Duration::from_secs(4));
    assert!(others.iter().all(|o| !marked(&sim, *o)), "expired");
}
