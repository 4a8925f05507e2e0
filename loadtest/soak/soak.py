#!/usr/bin/env python3
"""The chaos soak: `make soak` (30 minutes), `make soak SOAK_MINUTES=3` (in
`make test`).

    loadtest/soak/soak.py [--minutes 30] [--seed 1] [--rate 100] [--users 300]
                          [--nodes 5] [--work DIR]

A `ringmesh dev` farm of --nodes supernodes (k=3, no authentication: the
load is what is measured, not digest) carries a steady mixed load from
`ringmesh-load` (refresh REGISTERs and calls, 70:30, at --rate operations a
second, handsets spread over every node, calls crossing nodes). Every 60 s
a supernode other than the first (the ring's founder) is chosen, with the
action, by a generator seeded by --seed (so a run replays): SIGKILL and
restart, SIGSTOP for 20 s, or SIGTERM (drain, hand-off) and restart.
`ringmesh-load` logs each step and samples every node's RSS every 10 s.
The supernodes run with --presize-transactions 0 (tables grown by the
traffic), so that the room a production node's tables make at start, made
resident over hours of use, is not reported as growth.

The report (stdout, and --work/soak.md) gives the REGISTER and call
success rates, every chaos step, the bindings lost, and each node's RSS.
It fails (exit 1) when:
  - a binding is lost: every callee handset registered before the chaos
    (Expires 3600, refreshed by the load) must still resolve, through the
    first node, once the run is over;
  - memory grows (runs of RSS_CHECK_MINUTES or more): for every process
    that lived from the reference point (a third of the run: the 10th
    minute of 30) to the end, its RSS over the last third stays within 10%
    of its RSS at the reference point. A shorter run (the 3-minute one of
    `make test`) reports RSS without judging it: its reference point falls
    inside the nodes' warm-up, when RSS rises by design.

Success rates are reported, not judged: a handset whose supernode is
frozen or restarting fails until it is back, as a phone would.

With --upgrade-from DIR it is a rolling upgrade instead (`make upgrade`):
the farm starts from DIR/ringmesh (the previous release) and, every 30 s,
the next supernode (the founder last) is stopped with SIGTERM (drain,
hand-off) and started again from the current build with the same flags.
While the farm runs mixed versions the current nodes' view of the ring
must show both protocol versions, every node a full ring and no link
refused for its version. The report adds the failures by reason; it fails
when a binding is lost (checked once every node is upgraded, while the
load still runs), when a node was not upgraded, or when an operation
failed with an answer that did not ask to retry (Retry-After: a 503 of a
draining node, or a 480 for a callee whose supernode did not come back
within the 3 s a node of this build waits) or with no answer at all. Plain
480s (no Retry-After) come from nodes of a previous release that does not
wait: they are counted and bounded (PREVIOUS_480_PCT of the calls). So are
INVITEs with no answer (PREVIOUS_TIMEOUT_PCT): a stopping node of the
previous release dropped the calls that reached it over the overlay after
its last transaction ended, and a caller's supernode of that release
waited on them past the handset's timeout (this build answers them while
it drains, and ends a call at a supernode that is gone at once).

Everything listens on 127.0.0.1; every process started here is stopped by
its PID; the load is bounded by its duration. Python standard library only.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release")
DOMAIN = "ringmesh.test"
CHAOS_EVERY = 60
UPGRADE_EVERY = 30
PREVIOUS_480_PCT = 2.0
PREVIOUS_TIMEOUT_PCT = 0.1
RSS_CHECK_MINUTES = 15


def port_block_free(base, n=900):
    for p in range(base, base + n, 7):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
            finally:
                s.close()
    return True


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop(pid, wait=40.0):
    """SIGTERM to our own child `pid`, SIGKILL after `wait` s."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + wait
    while time.time() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def start_farm(a, work):
    for _ in range(50):
        port = random.randrange(20000, 28000, 1000)
        if port_block_free(port):
            break
    else:
        sys.exit("soak: no free block of 900 ports on 127.0.0.1")
    data = os.path.join(work, "farm")
    json_path = os.path.join(work, "farm.json")
    out = open(json_path, "w")
    err = open(os.path.join(work, "dev.err"), "w")
    argv = [os.path.join(a.upgrade_from or BIN, "ringmesh"), "dev", "--json", "--auth", "none",
            "--nodes", str(a.nodes), "--replicas", "3", "--sip-port", str(port),
            "--data", data, "--log", "warn", "--trusted", "load=127.0.0.1"]
    if not a.upgrade_from:
        argv += ["--presize-transactions", "0"]  # see the module docs
    p = subprocess.Popen(argv, stdout=out, stderr=err)
    deadline = time.time() + 90
    while time.time() < deadline:
        out.flush()
        with open(json_path) as f:
            lines = [json.loads(x) for x in f if x.strip()]
        if any(x.get("event") == "ready" for x in lines):
            return p, json_path, [x for x in lines if x.get("event") == "node"]
        if p.poll() is not None:
            sys.exit(f"soak: ringmesh dev exited; see {work}/dev.err")
        time.sleep(0.2)
    stop(p.pid)
    sys.exit(f"soak: the farm was not ready within 90 s; see {work}")


def unresolved(node, users):
    """The users that have no binding at `node` (REGISTER without Contact,
    no authentication), each asked up to 4 times."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    host, port = node.rsplit(":", 1)
    me = "127.0.0.1:%d" % sock.getsockname()[1]
    todo = set(users)
    found = {}
    for attempt in range(4):
        for chunk_start in range(0, len(todo), 100):
            chunk = sorted(todo)[chunk_start:chunk_start + 100]
            for u in chunk:
                req = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsoak{attempt}{u}\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:{u}@{DOMAIN}>;tag=s{attempt}\r\nTo: <sip:{u}@{DOMAIN}>\r\n"
                       f"Call-ID: soak-{u}\r\nCSeq: {attempt + 1} REGISTER\r\nContent-Length: 0\r\n\r\n")
                sock.sendto(req.encode(), (host, int(port)))
            deadline = time.time() + 3
            while time.time() < deadline and any(u not in found for u in chunk):
                try:
                    data, _ = sock.recvfrom(65536)
                except socket.timeout:
                    continue
                text = data.decode(errors="replace")
                if not text.startswith("SIP/2.0 200"):
                    continue
                for line in text.split("\r\n"):
                    if line.startswith("Call-ID: soak-"):
                        u = line[len("Call-ID: soak-"):].strip()
                        found[u] = sum(1 for x in text.split("\r\n") if x.startswith("Contact:"))
        todo = {u for u in users if u not in found}
        if not todo:
            break
    return sorted(u for u in users if found.get(u, 0) == 0)


def rss_check(samples, duration):
    """(lines of the table, failures): each process (node, pid) living from
    the reference point to the end, its RSS over the last third against its
    RSS at the reference point."""
    ref_t, tail_t = duration / 3, duration * 2 / 3
    by_proc = {}
    for s in samples:
        by_proc.setdefault((s["node"], s["pid"]), []).append((s["t_s"], s["rss_kib"]))
    lines, failures = [], []
    for (node, pid), pts in sorted(by_proc.items()):
        pts.sort()
        first, last = pts[0][0], pts[-1][0]
        if first > ref_t or last < duration - 15:
            lines.append(f"| {node} | {pid} | {first:.0f}-{last:.0f} s | {pts[-1][1] / 1024:.1f} | (not alive the whole window) |")
            continue
        ref = min(pts, key=lambda p: abs(p[0] - ref_t))[1]
        tail = [r for t, r in pts if t >= tail_t]
        worst = max(tail)
        ratio = worst / ref
        ok = ratio <= 1.10
        lines.append(f"| {node} | {pid} | {first:.0f}-{last:.0f} s | {ref / 1024:.1f} -> max {worst / 1024:.1f} | {ratio:.3f} {'ok' if ok else 'GROWS'} |")
        if not ok:
            failures.append(f"{node} (pid {pid}): RSS {ref} KiB at {ref_t:.0f} s, up to {worst} KiB later ({ratio:.2f}x)")
    return lines, failures


def sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def metric(addr, name, **labels):
    """The sum of the series `name` whose labels include `labels`, at a
    node's metrics address (None: no answer, or no such series)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = None
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name or not all(w in rest for w in want):
            continue
        try:
            total = (total or 0.0) + float(value)
        except ValueError:
            pass
    return total


def ring_view(admin):
    """(alive members, their protocol versions) in a node's view of the
    ring (`ringmesh ctl ring`), or None when it does not answer."""
    try:
        out = subprocess.run([os.path.join(BIN, "ringmesh"), "ctl", "--json", "--admin", admin, "ring"],
                             capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    members = [m for m in json.loads(out.stdout)["members"] if m["state"] == "alive"]
    return len(members), sorted({m["protocol_version"] for m in members})


def watch_upgrade(nodes, load, t0, check_at, users):
    """While `load` runs, until `check_at` s (after the last node's upgrade,
    before the load ends and stops the nodes it restarted: a sample taken
    then would see nodes going away): every 5 s, each node's ring size,
    version refusals and view of versions; at the end, the users that no
    longer resolve. (The samples, the users lost.)"""
    samples, lost = [], None
    while load.poll() is None:
        t = time.time() - t0
        for n in nodes:
            view = ring_view(n["admin"])
            samples.append({
                "t_s": round(t, 1), "node": n["name"],
                "ring": metric(n["metrics"], "ringmesh_overlay_ring_size"),
                "refused_version": metric(n["metrics"], "ringmesh_overlay_link_refusals_total", reason="version"),
                "alive": view[0] if view else None, "versions": view[1] if view else None,
            })
        if t >= check_at:
            lost = unresolved(nodes[0]["sip"], users)
            break
        for _ in range(50):
            if load.poll() is not None:
                break
            time.sleep(0.1)
    return samples, lost


def upgrade_check(a, report, samples):
    """(lines of the report, failures) of a rolling upgrade."""
    lines, failures = [], []
    names = [f"sn{i}" for i in range(a.nodes)]
    churn = report.get("churn", [])
    for name in names:
        steps = [e["event"] for e in churn if e["node"] == name]
        if "upgrade" not in steps or "ready" not in steps[steps.index("upgrade"):]:
            failures.append(f"{name} was not upgraded (steps: {steps})")
    mixed = [s for s in samples if s["versions"] and len(s["versions"]) > 1]
    seen = sorted({v for s in samples if s["versions"] for v in s["versions"]})
    lines.append(f"- protocol versions seen in the nodes' views: {', '.join(seen) or 'none'}; "
                 f"views holding two at once: {len(mixed)} of {len(samples)} samples")
    refused = max((s["refused_version"] or 0 for s in samples), default=0)
    lines.append(f"- overlay links refused for their version: {refused:g}")
    if refused:
        failures.append(f"{refused:g} overlay links refused for their version")
    last_t = max((s["t_s"] for s in samples), default=0)
    last = [s for s in samples if s["t_s"] >= last_t - 6]
    final = {s["node"]: s for s in last}
    for name in names:
        s = final.get(name)
        if not s or s["alive"] != a.nodes or s["ring"] != a.nodes or not s["versions"] or len(s["versions"]) != 1:
            failures.append(f"{name} at the end: {s}")
    if final:
        lines.append(f"- at the end every node sees {a.nodes} alive members, all speaking "
                     f"{', '.join(sorted({v for s in final.values() for v in (s['versions'] or [])}))}")
    fails = report.get("failures", {})
    lines.append("- failed operations by reason: " +
                 (", ".join(f"{k}: {v}" for k, v in sorted(fails.items())) or "none"))
    # A node of this build waits for a restarting supernode, and answers
    # 480 with Retry-After if it does not come back; a plain 480 comes from
    # a node of the previous release, which did neither: counted, bounded,
    # not failed (they go once the previous release has the wait too).
    plain_480 = fails.get("INVITE 480", 0)
    calls = report["by_kind"]["call"]["started"]
    if plain_480:
        lines.append(f"- calls answered a plain 480 by nodes of the previous release: {plain_480} of {calls} "
                     f"({100.0 * plain_480 / max(calls, 1):.2f}%; at most {PREVIOUS_480_PCT:g}% allowed)")
        if plain_480 > calls * PREVIOUS_480_PCT / 100:
            failures.append(f"{plain_480} calls answered a plain 480, more than {PREVIOUS_480_PCT:g}%")
    # Calls a stopping node of the previous release dropped (module docs).
    lost = fails.get("INVITE timeout", 0)
    if lost:
        lines.append(f"- calls left unanswered by stopping nodes of the previous release: {lost} of {calls} "
                     f"({100.0 * lost / max(calls, 1):.3f}%; at most {PREVIOUS_TIMEOUT_PCT:g}% allowed)")
        if lost > calls * PREVIOUS_TIMEOUT_PCT / 100:
            failures.append(f"{lost} calls got no answer, more than {PREVIOUS_TIMEOUT_PCT:g}%")
    bad = {k: v for k, v in fails.items()
           if not k.endswith(" Retry-After") and k not in ("INVITE 480", "INVITE timeout")}
    if bad:
        failures.append("operations failed without being asked to retry: " +
                        ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())))
    return lines, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--work", default=None)
    ap.add_argument("--upgrade-from", default=None, metavar="DIR",
                    help="a rolling upgrade from DIR/ringmesh (the previous release) to the current build")
    a = ap.parse_args()
    if not 1 <= a.minutes <= 240 or a.nodes < 4 or a.users < 10 or not 1 <= a.rate <= 5000:
        sys.exit("soak: --minutes 1..240, --nodes >= 4, --users >= 10, --rate 1..5000")
    for b in ("ringmesh", "ringmesh-load"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            sys.exit(f"soak: {BIN}/{b} is missing: cargo build --release -p ringmesh -p ringmesh-load")
    if a.upgrade_from:
        a.upgrade_from = os.path.abspath(a.upgrade_from)
        old_bin = os.path.join(a.upgrade_from, "ringmesh")
        if not os.access(old_bin, os.X_OK):
            sys.exit(f"soak: --upgrade-from: {old_bin} is missing (loadtest/upgrade/build-previous.sh builds it)")
        if sha256(old_bin) == sha256(os.path.join(BIN, "ringmesh")):
            sys.exit(f"soak: {BIN}/ringmesh is the previous release's build: build the current one (make release)")
        if a.minutes * 60 < UPGRADE_EVERY * (a.nodes + 2):
            sys.exit(f"soak: --upgrade-from needs --minutes of at least {UPGRADE_EVERY * (a.nodes + 2) / 60:g} "
                     f"for {a.nodes} nodes (a node every {UPGRADE_EVERY} s, then a last {UPGRADE_EVERY} s)")
    work = a.work or tempfile.mkdtemp(prefix="ringmesh-soak-")
    os.makedirs(work, exist_ok=True)
    duration = int(a.minutes * 60)
    print(f"soak: {a.minutes:g} min, seed {a.seed}, {a.rate} ops/s, {a.users} handsets, {a.nodes} nodes; work {work}",
          flush=True)
    farm, farm_json, nodes = start_farm(a, work)
    load_json = os.path.join(work, "load.json")
    try:
        if a.upgrade_from:
            churn = ["--churn-every", str(UPGRADE_EVERY), "--upgrade-to", os.path.join(BIN, "ringmesh")]
        else:
            churn = ["--churn-every", str(CHAOS_EVERY), "--chaos"]
        argv = [os.path.join(BIN, "ringmesh-load"), "--scenario", "mixed", "--farm-json", farm_json,
                "--users", str(a.users), "--rate", str(a.rate), "--duration", str(duration),
                "--expires", "3600", "--mix", "register=70,call=30", "--timeout-ms", "8000",
                *churn, "--seed", str(a.seed), "--json-out", load_json, "--no-progress"]
        samples, lost = [], None
        users = [f"user{i}" for i in range(a.users)]
        with open(os.path.join(work, "load.log"), "w") as log:
            load = subprocess.Popen(["timeout", str(duration + 300), *argv], stdout=log, stderr=subprocess.STDOUT)
            if a.upgrade_from:
                # The load's setup (every callee registered) comes first.
                samples, lost = watch_upgrade(nodes, load, time.time(), duration - 20, users)
            rc = load.wait()
        if rc not in (0, 1) or not os.path.exists(load_json):
            sys.exit(f"soak: ringmesh-load failed ({rc}); see {work}/load.log")
        with open(load_json) as f:
            report = json.load(f)
        if lost is None:
            lost = unresolved(nodes[0]["sip"], users)
    finally:
        # Nodes ringmesh-load restarted were its children and are stopped;
        # `ringmesh dev` stops the rest and its control plane.
        stop(farm.pid)

    def rate(k):
        c = report["by_kind"][k]
        return c["succeeded"], c["started"], 100.0 * c["succeeded"] / max(c["started"], 1)

    rss_lines, rss_failures = rss_check(report.get("rss", []), duration)
    command = (f"`loadtest/soak/soak.py --minutes {a.minutes:g} --seed {a.seed} --rate {a.rate} --users {a.users} "
               f"--nodes {a.nodes}" + (" --upgrade-from DIR`" if a.upgrade_from else "`"))
    load_text = f"mixed load (refresh REGISTERs 70, calls 30) at {a.rate} ops/s"
    if a.upgrade_from:
        out = [f"## Rolling upgrade: {a.nodes} nodes", "", command,
               f"on {os.cpu_count()} CPUs; a {a.nodes}-node farm (k=3) of the previous release, {load_text}; "
               f"every {UPGRADE_EVERY} s the next node (the founder last) is stopped with SIGTERM and started "
               f"from the current build.", ""]
    else:
        out = [f"## Chaos soak: {a.minutes:g} minutes, seed {a.seed}", "", command,
               f"on {os.cpu_count()} CPUs; a {a.nodes}-node farm (k=3), {load_text}; "
               f"every {CHAOS_EVERY} s a node other than the first is killed, frozen for 20 s, or restarted; "
               f"supernodes with --presize-transactions 0.", ""]
    for k in ("register", "call"):
        ok, started, pct = rate(k)
        out.append(f"- {k}: {ok} of {started} succeeded ({pct:.2f}%)")
    out.append(f"- bindings lost: {len(lost)} of {a.users}" + (f" (e.g. {lost[:5]})" if lost else ""))
    upgrade_lines, upgrade_failures = upgrade_check(a, report, samples) if a.upgrade_from else ([], [])
    out += upgrade_lines
    out += ["", "| t (s) | step | node | pid | detail |", "|---|---|---|---|---|"]
    for e in report.get("churn", []):
        if e["event"] in ("kill", "freeze", "thaw", "stop", "ready", "not_ready", "restart_failed", "skip", "upgrade"):
            out.append(f"| {e['t_s']:.1f} | {e['event']} | {e['node']} | {e['pid']} | {e['detail'][:60]} |")
    out += ["", "| node | pid | alive | RSS MiB (reference -> last third) | ratio |", "|---|---|---|---|---|"]
    out += rss_lines
    text = "\n".join(out) + "\n"
    print(text)
    with open(os.path.join(work, "soak.md"), "w") as f:
        f.write(text)
    judged = a.minutes >= RSS_CHECK_MINUTES
    failures = ([f"{len(lost)} bindings lost"] if lost else []) + (rss_failures if judged else []) + upgrade_failures
    if failures:
        print("soak FAILED: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)
    if a.upgrade_from:
        print("upgrade passed: every node upgraded, no binding lost, every failure asked to retry")
    elif judged:
        print("soak passed: no binding lost, no memory growth")
    else:
        print(f"soak passed: no binding lost (RSS reported, judged only in runs of {RSS_CHECK_MINUTES} minutes or more)")


if __name__ == "__main__":
    main()
