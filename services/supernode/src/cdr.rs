//! Call records on disk: JSON lines in `<dir>/calls.jsonl`, written by a
//! thread of their own with group commit, rotated by size, and closed on
//! the next start when this node died in the middle of a call.
//!
//! Group commit: the first record after a commit starts a window of
//! `commit` (100 ms by default); at its end every record of the window is
//! written with one `write` and made durable with one `fdatasync`. A
//! record therefore reaches the page cache (safe from a kill -9 of the
//! process) and the device (safe from a power cut) at most `commit` plus
//! one write and one sync after the event: that is the loss window. The
//! SIP core only hands the record over a channel; it never waits for the
//! disk.
//!
//! Rotation: when a commit leaves the file larger than `rotate_bytes` it
//! is renamed `calls-<unix ms>.jsonl` and a new one started; the oldest
//! rotated files beyond `keep` are removed.
//!
//! Recovery: at start the current file and the newest rotated one are
//! read; a call with an interim record and no final one was up when the
//! node died, and gets a final record with result `edge_lost`, `ended_by`
//! `farm` and `end_ms` the moment of the restart (an upper bound: the call
//! ended somewhere between its last record and then).
//!
//! The record schema is in docs/operations.md ("Call records").

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use ringmesh_proxy::cdr::{CallRecord, CallResult, EndedBy};
use serde_json::Value;

/// The file records are appended to.
pub const CURRENT: &str = "calls.jsonl";

/// Where and how call records are written.
#[derive(Debug, Clone)]
pub struct CdrConfig {
    pub dir: PathBuf,
    /// The group-commit window.
    pub commit: Duration,
    /// The size past which the file is rotated.
    pub rotate_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// What the writer counts.
#[derive(Debug, Clone)]
pub struct CdrMetrics {
    pub records: IntCounterVec,
    pub write_errors: IntCounter,
    pub commit_seconds: Histogram,
}

/// The writer of one node: records go in on the SIP core task and are
/// written by the writer thread. Dropping it commits what is queued and
/// joins the thread.
#[derive(Debug)]
pub struct CdrWriter {
    tx: Option<mpsc::Sender<Box<CallRecord>>>,
    thread: Option<JoinHandle<()>>,
}

impl CdrWriter {
    /// Opens `<dir>/calls.jsonl` (creating the directory), closes the calls
    /// the last run left open, and starts the writer thread.
    pub fn open(cfg: CdrConfig, node: [u8; 16], metrics: CdrMetrics) -> anyhow::Result<CdrWriter> {
        std::fs::create_dir_all(&cfg.dir).with_context(|| {
            format!(
                "cannot create the call-record directory {}",
                cfg.dir.display()
            )
        })?;
        let mut out = File::open(&cfg, node, metrics)?;
        let lost = out.close_lost(now_ms())?;
        if lost > 0 {
            tracing::warn!(
                calls = lost,
                "calls up when this node stopped are recorded as edge_lost"
            );
        }
        let (tx, rx) = mpsc::channel::<Box<CallRecord>>();
        let thread = std::thread::Builder::new()
            .name("cdr".into())
            .spawn(move || out.run(&rx))
            .context("cannot start the call-record thread")?;
        Ok(CdrWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands a record to the writer thread.
    pub fn record(&self, r: Box<CallRecord>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(r);
        }
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's side.
struct File {
    cfg: CdrConfig,
    node: String,
    file: std::fs::File,
    size: u64,
    metrics: CdrMetrics,
}

impl File {
    fn open(cfg: &CdrConfig, node: [u8; 16], metrics: CdrMetrics) -> anyhow::Result<File> {
        let file = open_current(&cfg.dir)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(File {
            cfg: cfg.clone(),
            node: hex::encode(node),
            file,
            size,
            metrics,
        })
    }

    /// Appends a final `edge_lost` record for every call the current and
    /// the newest rotated file left with an interim record only.
    fn close_lost(&mut self, now_ms: u64) -> anyhow::Result<u64> {
        let mut files = rotated(&self.cfg.dir);
        let newest = files.pop();
        // The calls with an interim record and no final yet, by ICID, each
        // with its place in the files (to be closed in that order). A
        // call's final follows its interim (one writer, in order), so only
        // calls still open are held, not the history.
        let mut open: HashMap<String, (usize, Value)> = HashMap::new();
        let mut seen = 0;
        for path in newest.into_iter().chain([self.cfg.dir.join(CURRENT)]) {
            let Ok(f) = std::fs::File::open(&path) else {
                continue;
            };
            for line in std::io::BufReader::new(f).lines() {
                // A torn last line (a crash mid-write) is skipped.
                let Ok(v) = line
                    .map_err(drop)
                    .and_then(|l| serde_json::from_str::<Value>(&l).map_err(drop))
                else {
                    continue;
                };
                let icid = v["icid"].as_str().unwrap_or_default().to_string();
                seen += 1;
                if v["record"] == "interim" {
                    open.insert(icid, (seen, v));
                } else {
                    open.remove(&icid);
                }
            }
        }
        let mut buf = Vec::new();
        let mut lost = 0;
        let mut open: Vec<(usize, Value)> = open.into_values().collect();
        open.sort_unstable_by_key(|(at, _)| *at);
        for (_, mut v) in open {
            v["record"] = "final".into();
            v["result"] = CallResult::EdgeLost.as_str().into();
            v["ended_by"] = EndedBy::Farm.as_str().into();
            v["end_ms"] = now_ms.into();
            v["duration_ms"] = v["answer_ms"]
                .as_u64()
                .map(|a| now_ms.saturating_sub(a))
                .into();
            serde_json::to_writer(&mut buf, &v)?;
            buf.push(b'\n');
            lost += 1;
        }
        if lost > 0 {
            self.commit(&mut buf, lost, 0)?;
        }
        Ok(lost)
    }

    /// Group commit until the channel closes.
    fn run(mut self, rx: &mpsc::Receiver<Box<CallRecord>>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let (mut finals, mut interims) = (0u64, 0u64);
        let mut window: Option<Instant> = None;
        loop {
            let got = match window {
                Some(end) => rx.recv_timeout(end.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match got {
                Ok(r) => {
                    if r.interim {
                        interims += 1;
                    } else {
                        finals += 1;
                    }
                    line(&mut buf, &r, &self.node);
                    window.get_or_insert_with(|| Instant::now() + self.cfg.commit);
                    // A burst does not grow the buffer without bound.
                    if buf.len() < 1 << 20 {
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.commit_counted(&mut buf, &mut interims, &mut finals);
                    return;
                }
            }
            let _ = self.commit_counted(&mut buf, &mut interims, &mut finals);
            window = None;
        }
    }

    fn commit_counted(
        &mut self,
        buf: &mut Vec<u8>,
        interims: &mut u64,
        finals: &mut u64,
    ) -> std::io::Result<()> {
        let r = self.commit(buf, *finals, *interims);
        (*interims, *finals) = (0, 0);
        r
    }

    /// Writes and syncs `buf` (emptied), counts its records, rotates.
    fn commit(&mut self, buf: &mut Vec<u8>, finals: u64, interims: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let r = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        self.metrics
            .commit_seconds
            .observe(t0.elapsed().as_secs_f64());
        match &r {
            Ok(()) => {
                self.size += buf.len() as u64;
                self.metrics
                    .records
                    .with_label_values(&["final"])
                    .inc_by(finals);
                self.metrics
                    .records
                    .with_label_values(&["interim"])
                    .inc_by(interims);
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, records = finals + interims, "call records not written");
            }
        }
        buf.clear();
        if self.size > self.cfg.rotate_bytes
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "cannot rotate the call records");
        }
        r
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let current = self.cfg.dir.join(CURRENT);
        let to = self.cfg.dir.join(format!("calls-{}.jsonl", now_ms()));
        std::fs::rename(&current, &to)?;
        self.file = open_current(&self.cfg.dir)?;
        self.size = 0;
        let files = rotated(&self.cfg.dir);
        for old in files.iter().take(files.len().saturating_sub(self.cfg.keep)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

fn open_current(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(CURRENT);
    // A commit torn by a crash leaves half a line: cut it, so the next
    // record starts a line of its own.
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.last().is_some_and(|&b| b != b'\n')
    {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(path = %path.display(), dropped = bytes.len() - keep, "cutting a torn call record off");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(keep as u64))
            .with_context(|| format!("cannot repair {}", path.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The rotated files of `dir`, oldest first.
pub fn rotated(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let ms = name
                .strip_prefix("calls-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((ms, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// One record as it is written (schema version 1): serialized straight
/// from the record, without an intermediate JSON value.
#[derive(serde::Serialize)]
struct Line<'a> {
    v: u8,
    record: &'a str,
    icid: &'a str,
    call_id: &'a str,
    caller: &'a str,
    callee: &'a str,
    invite_ms: u64,
    answer_ms: Option<u64>,
    end_ms: Option<u64>,
    duration_ms: Option<u64>,
    status: u16,
    result: &'a str,
    ended_by: Option<&'a str>,
    nodes: Vec<String>,
    written_by: &'a str,
}

/// One record as a JSON line.
fn line(buf: &mut Vec<u8>, r: &CallRecord, node: &str) {
    let l = Line {
        v: 1,
        record: if r.interim { "interim" } else { "final" },
        icid: &r.icid,
        call_id: &r.call_id,
        caller: &r.caller,
        callee: &r.callee,
        invite_ms: r.invite_ms,
        answer_ms: r.answer_ms,
        end_ms: r.end_ms,
        duration_ms: r.answer_ms.zip(r.end_ms).map(|(a, e)| e.saturating_sub(a)),
        status: r.status,
        result: r.result.as_str(),
        ended_by: r.ended_by.map(EndedBy::as_str),
        nodes: r.nodes.iter().map(hex::encode).collect(),
        written_by: node,
    };
    let _ = serde_json::to_writer(&mut *buf, &l);
    buf.push(b'\n');
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> CdrMetrics {
        crate::metrics::Metrics::new("test").cdr
    }

    fn record(icid: &str, interim: bool) -> Box<CallRecord> {
        Box::new(CallRecord {
            interim,
            icid: icid.into(),
            call_id: format!("c-{icid}"),
            caller: "<sip:alice@ringmesh.test>".into(),
            callee: "sip:bob@ringmesh.test".into(),
            invite_ms: 1_000,
            answer_ms: Some(2_000),
            end_ms: (!interim).then_some(5_000),
            status: 200,
            result: if interim {
                CallResult::Answered
            } else {
                CallResult::Completed
            },
            ended_by: (!interim).then_some(EndedBy::Caller),
            nodes: vec![[1; 16], [2; 16]],
        })
    }

    fn cfg(dir: &Path) -> CdrConfig {
        CdrConfig {
            dir: dir.to_path_buf(),
            commit: Duration::from_millis(20),
            rotate_bytes: 1 << 20,
            keep: 2,
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_committed_within_the_window_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let w = CdrWriter::open(cfg(dir.path()), [1; 16], m.clone()).unwrap();
        w.record(record("a", true));
        w.record(record("a", false));
        let path = dir.path().join(CURRENT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&path).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = lines(&path);
        assert_eq!(got.len(), 2, "committed without closing the writer");
        assert_eq!(got[1]["record"], "final");
        assert_eq!(got[1]["result"], "completed");
        assert_eq!(got[1]["duration_ms"], 3000);
        assert_eq!(got[1]["ended_by"], "caller");
        assert_eq!(got[1]["nodes"][1], hex::encode([2; 16]));
        assert_eq!(got[1]["written_by"], hex::encode([1; 16]));
        drop(w);
        assert_eq!(m.records.with_label_values(&["final"]).get(), 1);
        assert_eq!(m.records.with_label_values(&["interim"]).get(), 1);
    }

    #[test]
    fn a_call_left_open_by_a_crash_is_closed_as_edge_lost_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CURRENT);
        let mut buf = Vec::new();
        line(&mut buf, &record("up", true), "n");
        line(&mut buf, &record("done", true), "n");
        line(&mut buf, &record("done", false), "n");
        // A commit torn by the crash.
        buf.extend_from_slice(b"{\"v\":1,\"record\":\"fin");
        std::fs::write(&path, &buf).unwrap();
        let w = CdrWriter::open(cfg(dir.path()), [1; 16], metrics()).unwrap();
        drop(w);
        let got: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let lost: Vec<&Value> = got.iter().filter(|v| v["result"] == "edge_lost").collect();
        assert_eq!(lost.len(), 1, "{got:?}");
        assert_eq!(lost[0]["icid"], "up");
        assert_eq!(lost[0]["record"], "final");
        assert_eq!(lost[0]["ended_by"], "farm");
        assert!(lost[0]["end_ms"].as_u64().unwrap() > 5_000);
        // Opening again finds nothing left open.
        drop(CdrWriter::open(cfg(dir.path()), [1; 16], metrics()).unwrap());
        let again = std::fs::read_to_string(&path).unwrap();
        assert_eq!(again.matches("edge_lost").count(), 1);
    }

    #[test]
    fn the_file_rotates_past_its_size_and_old_rotations_go() {
        let dir = tempfile::tempdir().unwrap();
        let c = CdrConfig {
            rotate_bytes: 2000,
            ..cfg(dir.path())
        };
        let w = CdrWriter::open(c, [1; 16], metrics()).unwrap();
        for i in 0..40 {
            w.record(record(&format!("r{i}"), false));
            std::thread::sleep(Duration::from_millis(if i % 5 == 4 { 30 } else { 0 }));
        }
        drop(w);
        let files = rotated(dir.path());
        assert_eq!(files.len(), 2, "only the newest are kept: {files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 2000);
        }
    }
}
