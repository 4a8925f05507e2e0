#!/usr/bin/env python3
"""A million bindings on a node: does it stay as fast, and how fast does it come back?

    loadtest/bench/million.py [--bindings 1000000] [--small 10000]
                              [--fill-rate 8000] [--probe-rate 2000]
                              [--probe-seconds 10] [--probes 3]
                              [--out docs/benchmarks.md] [--work DIR]

A 3-supernode farm with k=3 (`ringmesh dev --auth none --nodes 3
--replicas 3`, release build), so every node holds every binding, pinned
to --server-cpu, the generator (ringmesh-load) to --load-cpu, normal
scheduling priority, as bench.py runs it:

1. registers --small distinct users, waits until no transaction lingers
   (Timer J), then --probes times offers --probe-rate REGISTERs a second
   for --probe-seconds (1,000 handsets, each registered and then
   refreshed) and records p50/p99 and the farm's CPU seconds per 1,000
   REGISTERs;
2. registers distinct users up to --bindings, waits again, and runs the
   same probes: the figures at a million against those at ten thousand
   (target: within 20%);
3. SIGKILLs the node sn2 and starts it again with the same command line
   and its data directory: the time to `/readyz` (serving, joined, replicas
   in place) and until its store holds its records again;
4. SIGKILLs it again, deletes its data directory and starts it: the same
   times, the bindings now coming from the two other replicas.

Writes the section "## One node, a million bindings" of --out. Every process
started here is stopped by its PID; every load run is bounded by count and
time; everything listens on 127.0.0.1. Python standard library only.
"""
import argparse
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its farm, load runs, process and report helpers)

HEAD = "## One node, a million bindings"
# The handsets of a probe: registered, then refreshed again and again (as
# most of a carrier's REGISTERs are), so the store keeps its size. Each
# probe's generator binds new ports: its contacts are new bindings of the
# same users, PROBE_USERS more per probe.
PROBE_USERS = 1_000


def records(metrics):
    """The records the node's store holds: one per address of record, and
    every user here has one binding but the probes' 1,000 (the bindings
    gauge is a census that trails the store by up to a pass)."""
    return bench.metric_sum([metrics], "ringmesh_overlay_records")


def ready(metrics):
    try:
        with urllib.request.urlopen(f"http://{metrics}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def fill(a, farm, users, count, tag):
    """Registers `count` fresh users in chunks of at most a minute each."""
    done = 0
    while done < count:
        n = min(count - done, a.fill_rate * 60)
        r = bench.run_rml(a, farm, "register", a.fill_rate, n / a.fill_rate, users, f"{tag}_{done}")
        if r is None:
            raise SystemExit("a fill run failed; see the log above")
        bench.log(f"  filled {done + r['ok']:,} ({r['failed']:,} failed, {r['r503']:,} × 503)")
        done += n


def probes(a, farm, users, tag):
    out = []
    for i in range(a.probes):
        r = bench.run_rml(a, farm, "register", a.probe_rate, a.probe_seconds, users, f"{tag}_probe{i}",
                          refresh=PROBE_USERS)
        if r is None:
            raise SystemExit("a probe run failed; see the log above")
        out.append(r)
        bench.log(f"  probe {i}: p50 {r['p50']} µs, p99 {r['p99']} µs, "
                  f"{r['cpu_per_1000']:.3f} CPU s per 1,000, {r['fail_pct']:.2f}% failed")
        time.sleep(2)
    return out


def restart(a, node, wipe, expect):
    """SIGKILL the node, (wipe its data directory,) start it with its own
    command line; the seconds to /readyz and to its records back (≥ 99.9%
    of `expect`), and the process (ours now)."""
    pid = node["pid"]
    os.kill(pid, signal.SIGKILL)
    if node.get("proc"):
        node["proc"].wait()
    # Gone, every thread of it, its ports free: a child of `ringmesh dev`
    # is reaped by it.
    deadline = time.time() + 60
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.02)
    data = node["argv"][node["argv"].index("--data") + 1]
    if wipe:
        shutil.rmtree(data)
    logf = open(os.path.join(a.work, f"{node['name']}-{'wiped' if wipe else 'kept'}.log"), "w")
    t0 = time.time()
    p = subprocess.Popen(["taskset", "-c", str(a.server_cpu), *node["argv"]], stdout=logf,
                         stderr=subprocess.STDOUT)
    bench.STARTED.append((p.pid, node["name"]))
    node["pid"], node["proc"] = p.pid, p
    t_ready = t_bound = None
    while time.time() - t0 < 300 and (t_ready is None or t_bound is None):
        if p.poll() is not None:
            raise SystemExit(f"{node['name']} exited on restart; see {logf.name}")
        now = time.time() - t0
        if t_ready is None and ready(node["metrics"]):
            t_ready = now
        if t_bound is None and records(node["metrics"]) >= 0.999 * expect:
            t_bound = now
        time.sleep(0.05)
    return {"ready": t_ready, "bound": t_bound, "held": records(node["metrics"]),
            "disk": disk_bytes(data)}


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bindings", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--fill-rate", type=int, default=8_000)
    p.add_argument("--probe-rate", type=int, default=2_000)
    p.add_argument("--probe-seconds", type=int, default=10)
    p.add_argument("--probes", type=int, default=3)
    p.add_argument("--port", type=int, default=19100)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--out", default=os.path.join(bench.ROOT, "docs", "benchmarks.md"))
    p.add_argument("--work", default="/tmp/ringmesh-million")
    a = p.parse_args()
    if not (1_000 <= a.small < a.bindings <= 5_000_000):
        raise SystemExit("need 1,000 ≤ --small < --bindings ≤ 5,000,000")
    if not (1 <= a.probes <= 10 and 1 <= a.probe_seconds <= 60 and 100 <= a.probe_rate <= a.fill_rate):
        raise SystemExit("need 1..10 --probes of 1..60 s, 100 ≤ --probe-rate ≤ --fill-rate")
    for b in ("ringmesh", "ringmesh-load"):
        if not os.access(os.path.join(bench.BIN, b), os.X_OK):
            raise SystemExit(f"{bench.BIN}/{b} missing: cargo build --release -p ringmesh -p ringmesh-load")
    os.makedirs(a.work, exist_ok=True)
    atexit.register(bench.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    t_start = time.time()
    info = bench.machine()
    users = bench.Users()
    farm = bench.Farm(a, a.port, a.work)
    res = {}
    bench.log(f"== {a.small:,} bindings")
    fill(a, farm, users, a.small, "small_fill")
    bench.wait_quiet(farm, 90)
    res["small"] = probes(a, farm, users, "small")
    bench.wait_quiet(farm, 90)
    res["held_small"] = [records(n["metrics"]) for n in farm.nodes]
    res["small_pss"] = [bench.rss_bytes(bench.tree_pids(n["pid"])) for n in farm.nodes]
    bench.log(f"== {a.bindings:,} bindings")
    t0 = time.time()
    fill(a, farm, users, a.bindings - int(min(res["held_small"])), "big_fill")
    res["fill_s"] = time.time() - t0
    bench.wait_quiet(farm, 90)
    res["held"] = [records(n["metrics"]) for n in farm.nodes]
    res["big_pss"] = [bench.rss_bytes(bench.tree_pids(n["pid"])) for n in farm.nodes]
    res["big"] = probes(a, farm, users, "big")
    bench.wait_quiet(farm, 90)
    node = dict(farm.nodes[2])
    expect = records(node["metrics"])
    bench.log(f"== restart {node['name']} ({expect:,.0f} bindings) from its data directory")
    res["kept"] = restart(a, node, False, expect)
    bench.log(f"  {res['kept']}")
    time.sleep(5)
    bench.log(f"== restart {node['name']} with its data directory wiped")
    res["wiped"] = restart(a, node, True, expect)
    bench.log(f"  {res['wiped']}")
    res["expect"] = expect
    bench.stop(node["pid"])
    farm.close()
    bench.stop_all()
    text = report(a, info, res, time.time() - t_start)
    print(text)
    bench.write_section(a.out, text, head=HEAD)
    return 0


def report(a, info, res, took):
    f, us = bench.fnum, bench.us
    L = []
    w = L.append
    w(HEAD)
    w("")
    w(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {took / 60:.0f} minutes. Machine: "
      f"{info['model']}, {info['cores']} CPUs, Linux {info['kernel']}.")
    w("")
    w(f"Command: `python3 loadtest/bench/million.py --bindings {a.bindings} --small {a.small} "
      f"--fill-rate {a.fill_rate} --probe-rate {a.probe_rate} --probe-seconds {a.probe_seconds} "
      f"--probes {a.probes}` (release build). A 3-supernode farm, k=3 (every node holds every "
      f"binding), pinned to CPU {a.server_cpu} with its control plane; ringmesh-load on CPU "
      f"{a.load_cpu}; normal priority. A probe offers {f(a.probe_rate)} REGISTERs/s for "
      f"{a.probe_seconds} s, spread over the three nodes, after the answered transactions of the "
      "fill have left Timer J; CPU is the farm's (three supernodes and the control plane).")
    w("")
    sizes = (("small", f"{f(a.small)} bindings"), ("big", f"{f(min(res['held']))} records"))
    w(f"Each probe: {f(PROBE_USERS)} handsets registered and then refreshed, {f(a.probe_rate)} "
      f"REGISTERs/s in all (the store grows by {f(PROBE_USERS)} bindings a probe: a new generator "
      f"binds new ports, so new contacts of the same users). The nodes held "
      f"{' / '.join(f(h) for h in res['held_small'])} records (addresses of record) after the small "
      "probes.")
    w("")
    w("| | " + " | ".join(s for _, s in sizes) + " | ratio |")
    w("|---|---|---|---|")

    def med(key, field):
        return statistics.median(r[field] for r in res[key])

    for field, what in (("p50", "REGISTER p50 µs"), ("p99", "REGISTER p99 µs"),
                        ("cpu_per_1000", "farm CPU s per 1,000 REGISTERs")):
        cells = []
        for key, _ in sizes:
            each = ", ".join(us(r[field]) if field != "cpu_per_1000" else f"{r[field]:.3f}" for r in res[key])
            m = med(key, field)
            cells.append(f"{us(m) if field != 'cpu_per_1000' else f'{m:.3f}'} (median of {each})")
        ratio = med("big", field) / max(med("small", field), 1e-9)
        w(f"| {what} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    fails = [sum(r["failed"] for r in res[k]) for k, _ in sizes]
    w(f"| probe REGISTERs failed | {f(fails[0])} | {f(fails[1])} | |")
    pss = [sum(res[k]) for k in ("small_pss", "big_pss")]
    w(f"| memory (PSS) of the three supernodes | {f(pss[0] / 2**20)} MiB | {f(pss[1] / 2**20)} MiB | |")
    grown = sum(res["held"]) - sum(res["held_small"])
    w("")
    w(f"Memory growth from {f(min(res['held_small']))} to {f(min(res['held']))} records: "
      f"{f((pss[1] - pss[0]) / max(grown, 1))} B per record (one binding each) per replica "
      f"(PSS, the three nodes holding "
      f"{' / '.join(f(h) for h in res['held'])}); the fill ran at {f(a.fill_rate)}/s and took "
      f"{res['fill_s']:.0f} s.")
    w("")
    w(f"Coming back after `kill -9` (node sn2, {f(res['expect'])} records; the farm idle):")
    w("")
    w("| restarted | to `/readyz` | to its records back (≥ 99.9%) | records then | data directory |")
    w("|---|---|---|---|---|")
    for key, what in (("kept", "from its data directory"), ("wiped", "data directory wiped: from its replicas")):
        r = res[key]
        t = lambda x: "not within 300 s" if x is None else f"{x:.1f} s"  # noqa: E731
        w(f"| {what} | {t(r['ready'])} | {t(r['bound'])} | {f(r['held'])} | {f(r['disk'] / 2**20)} MiB |")
    w("")
    w("`/readyz` answers 200 once the node serves SIP, has joined the ring and its replica partners "
      "have confirmed their ranges in sync (`ringmesh_overlay_replicas_below_k` = 0); the records "
      "are `ringmesh_overlay_records`, the store's own count.")
    w("")
    small99, big99 = med("small", "p99"), med("big", "p99")
    smallc, bigc = med("small", "cpu_per_1000"), med("big", "cpu_per_1000")
    ok99, okc = big99 <= 1.2 * small99, bigc <= 1.2 * smallc
    w("| target | measured | met |")
    w("|---|---|---|")
    w(f"| REGISTER p99 at {f(a.bindings)} within 20% of that at {f(a.small)} | {big99 / max(small99, 1):.2f}× | "
      f"{'yes' if ok99 else '**no**'} |")
    w(f"| CPU per REGISTER at {f(a.bindings)} within 20% of that at {f(a.small)} | {bigc / max(smallc, 1e-9):.2f}× | "
      f"{'yes' if okc else '**no**'} |")
    w("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
