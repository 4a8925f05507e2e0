//! Digest credentials parsing and verification on arbitrary input: never
//! panic, never accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_sip::Method;
use ringmesh_sip::digest::{Credentials, DigestAuth, Ha1, Verdict, uri_matches};

fuzz_target!(|data: &[u8]| {
    let mut auth = DigestAuth::new(b"fuzzing farm secret of 32 bytes.", 300, 1);
    let _ = auth.nonce(b"ringmesh.test", 1_800_000_000);
    let _ = auth.check_nonce(data, b"ringmesh.test", 1_800_000_000);
    let mid = data.len() / 2;
    let _ = uri_matches(&data[..mid], &data[mid..]);
    let Ok(c) = Credentials::parse(data) else {
        return;
    };
    let _ = (
        c.username(),
        c.realm(),
        c.uri(),
        c.response(),
        c.opaque(),
        c.algorithm(),
    );
    let ha1 = Ha1::compute(&c.username(), b"ringmesh.test", b"secret");
    let v = auth.verify(
        &c,
        b"ringmesh.test",
        &Method::Register,
        b"sip:ringmesh.test",
        &ha1,
        1_800_000_000,
    );
    // Without a nonce this farm issued (the MAC), nothing verifies, nor
    // gets as far as a stale, foreign or replay verdict.
    assert!(
        matches!(v, Verdict::Invalid(_)),
        "forged credentials accepted: {v:?}"
    );
});
