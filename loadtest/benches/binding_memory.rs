//! Memory per binding, measured (target: ≤ 300 bytes per binding per
//! replica at 1,000,000 bindings).
//!
//! Inserts N bindings (default 1,000,000; `BINDINGS=N` to change) the way a
//! supernode does — a REGISTER like ringmesh-load's is parsed, planned by
//! the registrar and applied — into the node-local `LocalStore`, and the
//! same bindings, encoded as the farm stores them, into an overlay `Store`
//! (one replica). A counting global allocator reports the bytes still
//! allocated afterwards (requested sizes, and the number of live
//! allocations: glibc adds about 8–16 bytes to each); the process's RSS
//! growth is printed beside it. On the filled overlay store it then times
//! an anti-entropy summary of a third of the ring from the store's slice
//! sums against a walk of the records (a same-process ratio).
//!
//! ```sh
//! cargo bench -p ringmesh-load --bench binding_memory
//! ```
//! Not a timed test: it prints figures; it asserts only that the two
//! summaries agree.

use std::alloc::System;

use bytes::Bytes;
use std::time::{Duration, Instant};

use ringmesh_overlay::RingRange;
use ringmesh_overlay::store::{Store, Summary};
use ringmesh_overlay::{Entry, Hlc, Key, NodeId, Record};
use ringmesh_proxy::location::{LocalStore, LocationOp};
use ringmesh_proxy::registrar::{self, Arrival, RegistrarConfig};
use ringmesh_proxy::{FlowRef, Transport};
use ringmesh_sip::Message;
use ringmesh_sip::aor::Aor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CFG: RegistrarConfig = RegistrarConfig {
    min_expires: 60,
    max_expires: 7200,
    default_expires: 3600,
    max_contacts: 10,
    flow_timer: 120,
    allow_loopback_contacts: true,
};

/// A REGISTER as ringmesh-load writes it for user `i` on local port `port`.
fn register(i: u32, port: u16) -> Message {
    let text = format!(
        "REGISTER sip:ringmesh.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK1a2b3c4db.{i}.1.0\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{i}@ringmesh.test>;tag=1a2b3c4dt.{i}\r\n\
         To: <sip:user{i}@ringmesh.test>\r\n\
         Call-ID: 1a2b3c4du.{i}.0@ringmesh-load\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:user{i}@127.0.0.1:{port};transport=udp>\r\n\
         Expires: 3600\r\n\
         User-Agent: ringmesh-load\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text)).expect("a valid REGISTER")
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

struct Figures {
    bytes: f64,
    allocations: f64,
    rss: f64,
}

fn measure(n: u64, fill: impl FnOnce()) -> Figures {
    let rss0 = rss_bytes();
    let region = Region::new(GLOBAL);
    fill();
    let s = region.change();
    let live_bytes =
        s.bytes_allocated as f64 - s.bytes_deallocated as f64 + s.bytes_reallocated as f64;
    let live_allocs = s.allocations as f64 - s.deallocations as f64;
    Figures {
        bytes: live_bytes / n as f64,
        allocations: live_allocs / n as f64,
        rss: (rss_bytes().saturating_sub(rss0)) as f64 / n as f64,
    }
}

fn main() {
    // Each store is measured in a fresh process of its own, so that its RSS
    // growth is not memory the other one freed.
    match std::env::var("BINDING_MEMORY_PART").as_deref() {
        Ok("local") => local_store(),
        Ok("overlay") => overlay_store(),
        _ => {
            let me = std::env::current_exe().expect("own path");
            for part in ["local", "overlay"] {
                let status = std::process::Command::new(&me)
                    .env("BINDING_MEMORY_PART", part)
                    .status()
                    .expect("run a part");
                assert!(status.success(), "{part} failed");
            }
        }
    }
}

fn bindings() -> u32 {
    std::env::var("BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

const NOW_MS: u64 = 1_800_000_000_000;
const EDGE: [u8; 16] = [7u8; 16];

fn arrival(port: u16) -> Arrival {
    Arrival {
        flow: FlowRef::Udp {
            socket: 0,
            peer: format!("127.0.0.1:{port}").parse().expect("address"),
        },
        transport: Transport::Udp,
        edge: EDGE,
    }
}

fn port(i: u32) -> u16 {
    20_000 + (i % 40_000) as u16
}

fn local_store() {
    let n = bindings();
    let now_ms = NOW_MS;
    let mut local = LocalStore::new();
    let f = measure(u64::from(n), || {
        for i in 0..n {
            let msg = register(i, port(i));
            let aor = Aor::from_uri(msg.to_hdr().uri()).expect("aor");
            let plan = registrar::plan(&msg, &aor, &CFG, arrival(port(i)), now_ms, now_ms << 16)
                .expect("plan");
            local
                .execute(LocationOp::Register {
                    aor,
                    plan,
                    now_ms,
                    aliases: Vec::new(),
                })
                .expect("registered");
        }
    });
    assert_eq!(local.counts().primary, n as usize);
    println!(
        "LocalStore, {n} bindings: {:.0} bytes per binding allocated ({:.2} allocations each), RSS +{:.0} bytes per binding",
        f.bytes, f.allocations, f.rss
    );
}

fn overlay_store() {
    let n = bindings();
    let (now_ms, edge) = (NOW_MS, EDGE);
    let mut store = Store::new(24 * 3600 * 1000, true);
    let origin = NodeId::from_u128(u128::from_be_bytes(edge));
    let f = measure(u64::from(n), || {
        for i in 0..n {
            let msg = register(i, port(i));
            let aor = Aor::from_uri(msg.to_hdr().uri()).expect("aor");
            let plan = registrar::plan(&msg, &aor, &CFG, arrival(port(i)), now_ms, now_ms << 16)
                .expect("plan");
            // As the farm writes it (`OverlayStore`): the entry-form value.
            let b = &plan.contacts[0].binding;
            let id = b.key().to_entry_id();
            let value = b.encode_entry(&id, edge);
            let entry = Entry::new(
                id,
                value,
                Hlc::from_u64(now_ms << 16),
                origin,
                b.expires_at_ms,
            );
            let key = Key::hash(&aor.key_material());
            store.merge_record(key, &Record::from_entries([entry]), now_ms);
            // The overlay task persists and forgets dirty keys as it goes.
            while store.pop_dirty().is_some() {}
        }
    });
    assert_eq!(store.len(), n as usize);
    println!(
        "overlay Store (one replica), {n} bindings: {:.0} bytes per binding allocated ({:.2} allocations each), RSS +{:.0} bytes per binding",
        f.bytes, f.allocations, f.rss
    );
    anti_entropy_summary(&store);
}

/// What an anti-entropy round costs the node that starts it: the summary
/// of its primary range (a third of the ring in a 3-node farm) from the
/// store's slice summaries, against a walk of the range's records (how it
/// was computed before), median of 21 of each, in the same process.
fn anti_entropy_summary(store: &Store) {
    let third = u128::MAX / 3;
    let range = RingRange::new(third, 2 * third);
    let median = |f: &dyn Fn() -> Summary| {
        let mut t: Vec<Duration> = (0..21)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect();
        t.sort();
        t[t.len() / 2]
    };
    let walk = || {
        store
            .digests(range)
            .fold(Summary::default(), |s, (_, d)| Summary {
                hash: s.hash.wrapping_add(d),
                count: s.count + 1,
            })
    };
    assert_eq!(store.summary(range), walk(), "the two agree");
    let sliced = median(&|| store.summary(range));
    let walked = median(&walk);
    println!(
        "anti-entropy summary of a third of the ring ({} records): {sliced:?} from slice summaries, {walked:?} walking the records ({:.0}x)",
        store.summary(range).count,
        walked.as_secs_f64() / sliced.as_secs_f64()
    );
}
