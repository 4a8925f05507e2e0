#!/usr/bin/env python3
"""The bench's overload rows, repeated: goodput at 2x the knee, with its spread.

    loadtest/bench/overload.py --knee 13778 [--server farm|farm1|single]
                               [--scenario register|call] [--factor 2]
                               [--rounds 5] [--seconds 8] [--port-base 21000]

`make bench` offers each server twice its REGISTER (and call) knee once,
for 8 seconds, on a fresh server, and reports the goodput it kept. On a
shared two-core machine one such sample can land on a minute when another
job holds the server's core. This runs the same row `--rounds` times, each
on a fresh server exactly as bench.py starts it (server on CPU 1,
ringmesh-load on CPU 0, normal priority), and prints for every round the
goodput as a share of the knee, the 503s, what overload control shed and
why (summed over the nodes), and the latency of the admitted requests;
then the median, minimum and maximum share.

Every process started here is stopped by its PID; every run is bounded by
count, duration and `timeout`; everything listens on 127.0.0.1.
"""
import argparse
import os
import statistics
import sys
import time
import types
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

KINDS = {"farm": bench.Farm, "farm1": bench.Farm1, "single": bench.Supernode}


def shed_by_reason(server):
    """ringmesh_overload_shed_total by its reason label, summed over nodes."""
    out = {}
    for addr in server.metrics_addrs():
        try:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("ringmesh_overload_shed_total{"):
                labels, value = line.rsplit(" ", 1)
                reason = labels.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0) + int(float(value))
    return {k: v for k, v in out.items() if v}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knee", type=int, required=True, help="the knee the row is judged against, /s")
    p.add_argument("--server", choices=sorted(KINDS), default="farm")
    p.add_argument("--scenario", choices=("register", "call"), default="register")
    p.add_argument("--factor", type=float, default=2.0, help="offered rate = factor x knee")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--port-base", type=int, default=21000)
    p.add_argument("--work", default="/tmp/ringmesh-overload")
    a = p.parse_args()
    if not 1 <= a.rounds <= 20 or not 1 <= a.seconds <= 60:
        raise SystemExit("--rounds must be 1..20 and --seconds 1..60")
    if not 100 <= a.knee <= 100_000 or not 0.5 <= a.factor <= 4:
        raise SystemExit("--knee must be 100..100000 and --factor 0.5..4")
    os.makedirs(a.work, exist_ok=True)
    rate = int(a.factor * a.knee)
    cfg = types.SimpleNamespace(port_base=a.port_base + 50, callees=2000, work=a.work,
                                server_cpu=1, load_cpu=0, quick=False)
    users = bench.Users()
    shares = []
    for rnd in range(a.rounds):
        server = KINDS[a.server](cfg, a.port_base + 1200 * (rnd % 2), a.work)
        try:
            r = bench.run_rml(cfg, server, a.scenario, rate, a.seconds, users, f"overload_{rnd}")
            shed = shed_by_reason(server)
        finally:
            server.close()
        if r is None:
            print(f"round {rnd}: ringmesh-load failed", flush=True)
            continue
        share = 100.0 * r["goodput"] / a.knee
        shares.append(share)
        print(f"round {rnd}: offered {rate}/s (sent {r['sent_rate']:.0f}/s), goodput "
              f"{r['goodput']:.0f}/s = {share:.0f}% of the knee; {r['r503']} x 503, "
              f"{r['failed'] - r['r503']} other failures; shed {shed}; admitted p50 "
              f"{r['p50'] / 1000:.1f} ms, p99 {r['p99'] / 1000:.1f} ms; server CPU "
              f"{r['core_use']:.2f} of a core", flush=True)
        time.sleep(2)
    if shares:
        print(f"{a.server} {a.scenario} at {a.factor}x {a.knee}/s: goodput median "
              f"{statistics.median(shares):.0f}% of the knee (min {min(shares):.0f}%, max "
              f"{max(shares):.0f}%, {len(shares)} rounds)")
    return 0 if shares else 1


if __name__ == "__main__":
    sys.exit(main())
