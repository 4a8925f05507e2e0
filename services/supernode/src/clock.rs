//! The clocks the supernode reads: wall-clock milliseconds (binding
//! expiry, nonces, HLC stamps: compared across nodes) and the time the
//! sans-IO cores are fed with.

use std::time::{SystemTime, UNIX_EPOCH};

use ringmesh_proxy::Now;

/// Wall-clock milliseconds since the UNIX epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, as the proxy takes it.
pub fn now() -> Now {
    Now {
        mono: std::time::Instant::now(),
        wall_ms: wall_ms(),
    }
}
