//! `ringmesh ctl cdr tail`: the last call records a supernode wrote
//! (`<data>/cdr/calls.jsonl`, docs/operations.md), and, with `--follow`,
//! each new one as it is committed, across rotations.

use std::io::{BufRead as _, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::subscriber::{Exit, Io, report};

/// The `ctl cdr` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CdrCommand {
    /// Print the last call records of a node, and follow new ones.
    Tail {
        /// The node's call-record directory (its data directory's `cdr/`,
        /// or its --cdr-dir).
        dir: PathBuf,
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing records as they are written (until interrupted).
        #[arg(short, long)]
        follow: bool,
    },
}

/// How often a followed file is looked at.
const POLL: Duration = Duration::from_millis(200);

pub fn run(json: bool, cmd: CdrCommand, io: &mut Io<'_>) -> Exit {
    let CdrCommand::Tail { dir, lines, follow } = cmd;
    let path = dir.join("calls.jsonl");
    let Ok(mut file) = std::fs::File::open(&path) else {
        report(
            io,
            json,
            "USAGE",
            &format!(
                "no call records at {}: give a node's cdr directory (its data directory's cdr/)",
                path.display()
            ),
        );
        return Exit::Usage;
    };
    let mut text = String::new();
    if let Err(e) = file.read_to_string(&mut text) {
        report(io, json, "Unavailable", &format!("{}: {e}", path.display()));
        return Exit::Unavailable;
    }
    // Whole lines only: a commit may be half written as we read.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let all: Vec<&str> = text[..complete].lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        print(io, json, l);
    }
    if !follow {
        return Exit::Ok;
    }
    follow_file(&path, file, complete as u64, json, io)
}

/// Prints what is appended to `path` from `at` on; starts again at the top
/// of a new file when the old one was rotated away.
fn follow_file(
    path: &Path,
    mut file: std::fs::File,
    mut at: u64,
    json: bool,
    io: &mut Io<'_>,
) -> Exit {
    let mut inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let mut partial = String::new();
    loop {
        std::thread::sleep(POLL);
        let now = std::fs::metadata(path).ok();
        if now.as_ref().is_some_and(|m| m.ino() != inode) {
            // Rotated: what was left of the old file first, then the new.
            drain(&mut file, &mut at, &mut partial, json, io);
            let Ok(f) = std::fs::File::open(path) else {
                continue;
            };
            inode = f.metadata().map(|m| m.ino()).unwrap_or(0);
            (file, at) = (f, 0);
        }
        drain(&mut file, &mut at, &mut partial, json, io);
        if io.out.flush().is_err() {
            return Exit::Ok;
        }
    }
}

/// Prints the whole lines appended since `at`.
fn drain(
    file: &mut std::fs::File,
    at: &mut u64,
    partial: &mut String,
    json: bool,
    io: &mut Io<'_>,
) {
    if file.seek(SeekFrom::Start(*at)).is_err() {
        return;
    }
    let mut r = std::io::BufReader::new(file);
    let mut line = String::new();
    while let Ok(n) = r.read_line(&mut line) {
        if n == 0 {
            break;
        }
        *at += n as u64;
        if line.ends_with('\n') {
            partial.push_str(line.trim_end());
            print(io, json, partial);
            partial.clear();
        } else {
            // Half a line: the rest comes with the next commit.
            partial.push_str(&line);
        }
        line.clear();
    }
}

/// One record: the JSON line as written, or a readable summary.
fn print(io: &mut Io<'_>, json: bool, line: &str) {
    if json {
        let _ = writeln!(io.out, "{line}");
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        let _ = writeln!(io.out, "(unreadable record) {line}");
        return;
    };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let duration = v["duration_ms"]
        .as_u64()
        .map_or("-".to_string(), |d| format!("{:.1}s", d as f64 / 1000.0));
    let _ = writeln!(
        io.out,
        "{} {:<7} {:<12} {:>3} {} -> {} {} icid={}",
        v["invite_ms"].as_u64().unwrap_or(0),
        s("record"),
        s("result"),
        v["status"].as_u64().unwrap_or(0),
        s("caller"),
        s("callee"),
        duration,
        s("icid"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(dir: &Path, lines: usize, json: bool) -> (Exit, String, String) {
        let (mut stdin, mut out, mut err) = (std::io::empty(), Vec::new(), Vec::new());
        let mut io = Io {
            stdin: &mut std::io::BufReader::new(&mut stdin),
            out: &mut out,
            err: &mut err,
        };
        let cmd = CdrCommand::Tail {
            dir: dir.to_path_buf(),
            lines,
            follow: false,
        };
        let code = run(json, cmd, &mut io);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn tail_prints_the_last_whole_records_and_says_when_there_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, err) = tail(dir.path(), 10, false);
        assert_eq!(code, Exit::Usage);
        assert!(err.contains("no call records"), "{err}");
        let rec = |icid: &str, result: &str| {
            format!(
                "{{\"v\":1,\"record\":\"final\",\"icid\":\"{icid}\",\"invite_ms\":5,\"result\":\"{result}\",\
                 \"status\":486,\"caller\":\"<sip:a@x>\",\"callee\":\"sip:b@x\",\"duration_ms\":null}}\n"
            )
        };
        let text = [rec("1", "failed"), rec("2", "failed"), rec("3", "failed")].concat()
            + "{\"v\":1,\"rec";
        std::fs::write(dir.path().join("calls.jsonl"), text).unwrap();
        let (code, out, _) = tail(dir.path(), 2, true);
        assert_eq!(code, Exit::Ok);
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got.len(), 2, "the half-written line is not a record: {out}");
        assert!(got[0].contains("\"icid\":\"2\"") && got[1].contains("\"icid\":\"3\""));
        let (_, out, _) = tail(dir.path(), 1, false);
        assert_eq!(
            out,
            "5 final   failed       486 <sip:a@x> -> sip:b@x - icid=3\n"
        );
    }
}
