//! # ringmesh-load: a SIP load generator that outruns sipp
//!
//! It simulates many handsets over UDP or TCP against any SIP server (a
//! Ringmesh farm, Kamailio, ...) so that the server, not the generator, is
//! what gets measured: register storms and refreshes (with or without
//! digest auth), calls between registered handsets (across supernodes),
//! weighted mixes, and supernode churn during load.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the command line, validated once into a [`config::Config`] |
//! | [`engine`] | [`engine::Engine`]: the sans-IO handset farm (registrations, UAC and UAS call legs, RFC 3261 retransmissions), inputs `handle_*(.., now)`, outputs transmits and the next deadline |
//! | [`template`] | pre-built messages: written once with [`ringmesh_sip::Writer`], rendered per message by copying and formatting numbers |
//! | [`ident`] | branch, Call-ID and tag encodings that map a response or request back to its operation in O(1) |
//! | [`challenge`] | answering 401/407 with [`ringmesh_sip::digest`] (SHA-256 preferred, MD5) |
//! | [`timer`] | timers as data: one FIFO per fixed duration, O(1) arm and expiry |
//! | [`pacer`] | the open-loop schedule: operation k is due at `start + k / rate` |
//! | [`stats`] | HDR histograms, status counts, the per-second series, the JSON report |
//! | [`driver`] | the one tokio task per shard that feeds an engine from its sockets |
//! | [`farm`] | `ringmesh dev --json` node lines and churn (SIGKILL and restart) |
//! | [`plot`] | SVG plots of the series |
//! | [`run`] | `main`: shards on threads, progress bar, merging, outputs |
//!
//! Start from [`engine::Engine`]: everything a handset does is there, with
//! no I/O; [`driver`] only moves bytes. A run is split into shards (one
//! per `--threads`), each owning its own sockets, handsets and operations,
//! so shards share nothing but a start barrier and progress counters.

pub mod challenge;
pub mod config;
pub mod driver;
pub mod engine;
pub mod farm;
pub mod ident;
pub mod pacer;
pub mod plot;
pub mod run;
pub mod stats;
pub mod template;
pub mod timer;
