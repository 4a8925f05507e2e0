//! The stream framer of a connection against the scan from scratch: the
//! input (after its first byte) is cut into pieces of one size (from the
//! first byte), fed to one `Framer` as a connection's reads would be, each
//! frame removed as the reader removes it; every answer must be the one
//! `next_frame` gives for the same buffer. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_sip::Limits;
use ringmesh_sip::framing::{Frame, Framer, next_frame};

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    // Small limits too, so that the size errors are reached.
    let max_message = if first & 0x80 != 0 {
        300
    } else {
        Limits::default().max_message
    };
    let limits = Limits {
        max_message,
        ..Limits::default()
    };
    let step = usize::from(first & 0x3f) + 1;
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    while fed < data.len() {
        let n = step.min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            let got = framer.next_frame(&buf, &limits);
            // Every answer on small buffers; on large ones every frame and
            // the last answer (checking all would be quadratic).
            if buf.len() <= 1024 || got != Ok(Frame::Incomplete) || fed == data.len() {
                assert_eq!(
                    got,
                    next_frame(&buf, &limits),
                    "the framer disagrees with a scan from scratch on {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            match got {
                Ok(Frame::Ping(k) | Frame::Pong(k) | Frame::Message(k)) => {
                    buf.drain(..k);
                }
                Ok(Frame::Incomplete) => break,
                // The reader closes the stream.
                Err(_) => return,
            }
        }
    }
});
