//! The simulated network: per-link latency, loss and partitions.

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::id::NodeId;

/// Properties of the in-memory network.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Each link gets a fixed one-way latency in `[latency_min, latency_max]`,
    /// derived from the pair of ids (so it is stable for the run).
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Extra random delay per message, `[0, jitter)`: messages of one link
    /// may overtake each other, as on separate QUIC streams.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// How long a dial to an unreachable peer takes to fail (the driver then
    /// reports the link down).
    pub dial_timeout: Duration,
    /// Encode and decode every message through the protobuf codec instead
    /// of passing Rust values (slower; exercises the wire format).
    pub wire: bool,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(20),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            dial_timeout: Duration::from_millis(300),
            wire: false,
        }
    }
}

impl NetParams {
    /// The one-way delay of one message from `a` to `b`.
    pub fn delay(&self, a: NodeId, b: NodeId, rng: &mut SmallRng) -> Duration {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut z = (lo.as_u128() as u64)
            ^ ((hi.as_u128() >> 64) as u64).rotate_left(17)
            ^ 0x9e37_79b9_7f4a_7c15;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = self
            .latency_max
            .saturating_sub(self.latency_min)
            .as_micros() as u64;
        let base =
            self.latency_min + Duration::from_micros(if span == 0 { 0 } else { z % (span + 1) });
        let jitter = self.jitter.as_micros() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            rng.random_range(0..jitter)
        };
        base + Duration::from_micros(extra)
    }

    pub fn lost(&self, rng: &mut SmallRng) -> bool {
        self.loss > 0.0 && rng.random_bool(self.loss.min(1.0))
    }
}
