//! The overlay records on disk: an append-only journal of the frames the
//! overlay node produces ([`ringmesh_overlay::persist`]), written by a
//! thread of its own.
//!
//! Every file operation — appends, the periodic `fdatasync`, compaction —
//! runs on the journal thread, never on a tokio worker. A write can block
//! (an ext4 journal commit, dirty-page throttling) and compaction reads,
//! re-encodes and syncs the whole file: done on a worker, either stalls the
//! SIP core and the transport readers that share it, the datagrams wait in
//! the kernel, and overload control sees a queue that is not there.
//!
//! Durability: a frame reaches the page cache within `GATHER` (5 ms) of the
//! driver turn that made it (a killed process loses at most the frames
//! still in the channel, which the other replicas hold); `fdatasync` runs
//! once a second (a power cut loses at most that second). Dropping the
//! [`Journal`] writes what is queued, syncs and joins the thread.
//!
//! Cost: after each write the thread rests for `GATHER` before it takes
//! the next batch, so under load it wakes and writes once per `GATHER`
//! with every driver turn of that time in one `write(2)`, not once per
//! turn: on a node whose core is busy, a wake-up per turn (thousands a
//! second) costs context switches that the SIP path pays for.
//!
//! Compaction: when the file grows past [`compact_after`] the
//! thread replays its own file (last frame per key wins), writes the live
//! records as a snapshot to a new file, syncs it and renames it over the
//! journal. Frames that arrive meanwhile wait in the channel and are
//! appended to the new file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringmesh_overlay::persist;

/// How often written frames are synced to the device.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How long the journal thread gathers batches after a write.
const GATHER: Duration = Duration::from_millis(5);

/// The journal of one node: frames go in on the overlay task and are
/// written by the journal thread.
#[derive(Debug)]
pub struct Journal {
    /// Frames of the current driver turn, sent as one batch by [`flush`](Self::flush).
    batch: Vec<u8>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

/// When a journal of `bytes` holding about `records` records is compacted:
/// past 64 MiB, and past 2 KiB a record (so a large store is not rewritten
/// over and over).
pub fn compact_after(bytes: u64, records: usize) -> bool {
    bytes > (64 << 20).max(records as u64 * 2048)
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns what it holds.
    /// The file is rewritten as a snapshot first, which drops a torn tail
    /// and the history.
    pub fn open(path: &Path) -> anyhow::Result<(Journal, persist::Replay)> {
        Journal::open_with(path, compact_after)
    }

    /// [`open`](Self::open) with another compaction rule (tests).
    pub fn open_with(
        path: &Path,
        compact: fn(u64, usize) -> bool,
    ) -> anyhow::Result<(Journal, persist::Replay)> {
        let (file, replay, bytes) = rewrite(path)
            .with_context(|| format!("cannot open the overlay journal {}", path.display()))?;
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            bytes,
            records: replay.records.len(),
            dirty: false,
            last_sync: Instant::now(),
            compact,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringmesh-journal".into())
            .spawn(move || writer.run(rx))
            .context("cannot start the journal thread")?;
        let journal = Journal {
            batch: Vec::new(),
            tx: Some(tx),
            thread: Some(thread),
        };
        Ok((journal, replay))
    }

    /// Adds one frame to the current batch.
    pub fn append(&mut self, frame: &[u8]) {
        self.batch.extend_from_slice(frame);
    }

    /// Hands the batch to the journal thread (one channel send a turn).
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Some(tx) = &self.tx
            && tx.send(batch).is_err()
        {
            tracing::error!("the journal thread is gone: records are no longer persisted");
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flush();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Replays the file at `path`, rewrites it as a snapshot (atomically: a
/// new file synced and renamed over it) and opens it for appending.
fn rewrite(path: &Path) -> std::io::Result<(std::fs::File, persist::Replay, u64)> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let replay = persist::decode_log(&data);
    drop(data);
    let snapshot = persist::encode_snapshot(replay.records.iter());
    let tmp = path.with_extension("log.tmp");
    std::fs::write(&tmp, &snapshot)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        // The rename is durable once the directory is.
        let _ = d.sync_all();
    }
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    Ok((file, replay, snapshot.len() as u64))
}

/// The journal thread's state: it alone touches the file.
struct Writer {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
    /// Records in the file at the last rewrite.
    records: usize,
    dirty: bool,
    last_sync: Instant,
    compact: fn(u64, usize) -> bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Vec<u8>>) {
        loop {
            let wait = if self.dirty {
                SYNC_EVERY.saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match rx.recv_timeout(wait) {
                Ok(mut batch) => {
                    while let Ok(more) = rx.try_recv() {
                        batch.extend_from_slice(&more);
                    }
                    self.write(&batch);
                    std::thread::sleep(GATHER);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.sync();
                    return;
                }
            }
            if self.dirty && self.last_sync.elapsed() >= SYNC_EVERY {
                self.sync();
            }
            if (self.compact)(self.bytes, self.records) {
                self.compact_now();
            }
        }
    }

    fn write(&mut self, batch: &[u8]) {
        match self.file.write_all(batch) {
            Ok(()) => {
                self.bytes += batch.len() as u64;
                self.dirty = true;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot append to the overlay journal")
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!(error = %e, path = %self.path.display(), "cannot sync the overlay journal");
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    fn compact_now(&mut self) {
        self.sync();
        let started = Instant::now();
        match rewrite(&self.path) {
            Ok((file, replay, bytes)) => {
                tracing::info!(
                    from = self.bytes,
                    to = bytes,
                    records = replay.records.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "compacted the overlay journal"
                );
                self.file = file;
                self.bytes = bytes;
                self.records = replay.records.len();
            }
            Err(e) => {
                // Appends go on to the old file; the next turn retries.
                tracing::error!(error = %e, path = %self.path.display(), "journal compaction failed");
                self.records = usize::MAX / 4096;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmesh_overlay::{Entry, Hlc, Key, NodeId, Record};

    fn record(i: u64, payload: &str) -> (Key, Record) {
        let key = Key::hash(&i.to_be_bytes());
        let entry = Entry::new(
            Bytes::from(format!("contact-{i}")),
            Bytes::copy_from_slice(payload.as_bytes()),
            Hlc::new(1_000 + i, 0),
            NodeId::from_slice(&[1; 16]).unwrap(),
            u64::MAX,
        );
        (key, Record::from_entries([entry]))
    }

    fn frame(i: u64, payload: &str) -> Vec<u8> {
        let (k, r) = record(i, payload);
        persist::encode_frame(&k, Some(&r)).to_vec()
    }

    #[test]
    fn frames_written_come_back_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.log");
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert!(replay.records.is_empty());
        for i in 0..100 {
            j.append(&frame(i, "v1"));
            if i % 10 == 9 {
                j.flush();
            }
        }
        j.append(&frame(7, "v2"));
        // Not flushed: dropping the journal writes the last batch too.
        drop(j);
        let (_j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records.len(), 100);
        assert_eq!(replay.torn, None);
        let (k7, r7) = record(7, "v2");
        assert_eq!(
            replay.records.get(&k7),
            Some(&r7),
            "the last frame per key wins"
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.log");
        let mut data = frame(1, "a");
        data.extend_from_slice(&frame(2, "b"));
        let whole = frame(3, "c");
        data.extend_from_slice(&whole[..whole.len() - 3]);
        std::fs::write(&path, &data).unwrap();
        let (mut j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records.len(), 2);
        assert!(replay.torn.is_some());
        // The file was rewritten: appends after the tear are readable.
        j.append(&frame(4, "d"));
        drop(j);
        let (_j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records.len(), 3);
        assert_eq!(replay.torn, None);
    }

    #[test]
    fn compaction_keeps_the_last_version_of_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.log");
        // Compact as soon as the file holds more than 4 KiB.
        let (mut j, _) = Journal::open_with(&path, |bytes, _| bytes > 4096).unwrap();
        for round in 0..50 {
            for i in 0..10 {
                j.append(&frame(i, &format!("round {round}")));
            }
            j.flush();
        }
        drop(j);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size < 8192,
            "50 rounds of 10 records were compacted, not appended forever ({size} bytes)"
        );
        let (_j, replay) = Journal::open(&path).unwrap();
        assert_eq!(replay.records.len(), 10);
        for i in 0..10 {
            let (k, r) = record(i, "round 49");
            assert_eq!(replay.records.get(&k), Some(&r));
        }
    }
}
