//! Heap allocations per parse, counted by an instrumented global
//! allocator. One test in its own binary, so no other thread allocates
//! while a region is measured.

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::System;

use bytes::{Bytes, BytesMut};
use ringmesh_sip::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// (allocations, reallocations) made by parsing `bytes`.
fn count(bytes: Bytes) -> (usize, usize) {
    let region = Region::new(GLOBAL);
    let m = Message::parse(bytes).unwrap();
    let change = region.change();
    drop(m);
    (change.allocations, change.reallocations)
}

/// As a driver hands it over: read into a BytesMut, split off, frozen.
fn from_socket(raw: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(65_536);
    buf.extend_from_slice(raw);
    buf.extend_from_slice(b"next datagram");
    buf.split_to(raw.len()).freeze()
}

#[test]
fn allocations_per_parse() {
    let ok = common::ok_with_many_hops();
    let cases = [
        ("REGISTER, static", Bytes::from_static(common::REGISTER)),
        (
            "REGISTER, from a socket buffer",
            from_socket(common::REGISTER),
        ),
        (
            "REGISTER, from a Vec",
            Bytes::from(common::REGISTER.to_vec()),
        ),
        (
            "INVITE with SDP, from a socket buffer",
            from_socket(common::INVITE),
        ),
        ("200 OK with 10 Via and 10 Record-Route", from_socket(&ok)),
    ];
    let mut report = vec![];
    for (name, bytes) in cases {
        let (allocs, reallocs) = count(bytes);
        println!("{name}: {allocs} allocation(s), {reallocs} reallocation(s)");
        report.push((name, allocs, reallocs));
    }
    // The header index is the only allocation a parse makes: spans into
    // the buffer, no copies, no growth for typical messages.
    for (name, allocs, reallocs) in report {
        assert_eq!((allocs, reallocs), (1, 0), "{name}");
    }
}
