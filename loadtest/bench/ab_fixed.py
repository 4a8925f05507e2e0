#!/usr/bin/env python3
"""Two `ringmesh` binaries, interleaved, on the bench's fixed-rate rows.

    loadtest/bench/ab_fixed.py --baseline OTHER/ringmesh [--rounds 4]
                               [--port-base 19000] [--seconds 5] [--memory]

`make bench` runs each fixed-rate row (sipp: REGISTER at 10,000/s, calls at
1,000/s, one supernode) once per binary. On a shared two-core machine one
5-second sample of a low rate scatters by ±20%, more than the cost of a
small change. This runs the same rows for both binaries, alternating them,
`--rounds` times (each run on a fresh supernode, as the bench does), and
prints every sample and the ratio of the medians of server CPU seconds per
1,000 requests: this build / the baseline.

With `--memory`, the rows are the bench's memory phase instead: 300,000
fresh bindings at 20,000 REGISTER/s (ringmesh-load) on one supernode and
on a 3-node farm, Timer J waited out, and the growth of the server's PSS
per binding per replica; it prints each sample and the ratio of the
medians.

Same set-up as bench.py: server on CPU 1, sipp on CPU 0, normal priority,
127.0.0.1 only, every process stopped by its PID.
"""
import argparse
import os
import statistics
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROWS = (("register", 10_000), ("call", 1_000))
MEMORY_ROWS = (("supernode memory", 20_000), ("farm memory", 20_000))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the other ringmesh binary")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--port-base", type=int, default=19000)
    p.add_argument("--work", default="/tmp/ringmesh-ab")
    p.add_argument("--memory", action="store_true", help="the memory rows instead")
    a = p.parse_args()
    if not os.access(a.baseline, os.X_OK):
        raise SystemExit(f"--baseline {a.baseline}: not an executable")
    if not 1 <= a.rounds <= 20 or not 1 <= a.seconds <= 60:
        raise SystemExit("--rounds must be 1..20 and --seconds 1..60")
    binaries = {"this build": os.path.join(bench.BIN, "ringmesh"), "baseline": a.baseline}
    rows = MEMORY_ROWS if a.memory else ROWS
    samples = {(b, row): [] for b in binaries for row, _ in rows}
    users = bench.Users()
    for rnd in range(a.rounds):
        for i, (b, path) in enumerate(binaries.items()):
            for row, rate in rows:
                # A farm's nodes take ports up to its base + 1000.
                port = a.port_base + 2400 * rnd + 1200 * i
                cfg = types.SimpleNamespace(port_base=port + 50, callees=2000, work=a.work,
                                            server_cpu=1, load_cpu=0, quick=False,
                                            mem_bindings=300_000, mem_rate=rate)
                os.makedirs(a.work, exist_ok=True)
                kind = bench.Farm if row == "farm memory" else bench.Supernode
                server = bench.baseline_of(kind, path)(cfg, port, a.work)
                try:
                    if a.memory:
                        r = bench.memory_phase(cfg, server, users, f"ab_{rnd}_{i}")
                    else:
                        r = bench.run_sipp(cfg, server, row, rate, a.seconds, users,
                                           f"ab_{rnd}_{i}_{row}")
                finally:
                    server.close()
                if a.memory:
                    samples[(b, row)].append(r["per_binding"])
                    print(f"round {rnd}: {b}, {row}: {r['per_binding']:.0f} B per binding per "
                          f"replica ({r['bindings']:,} bindings x {r['replicas']}, "
                          f"{r['lingering_left']:.0f} transactions left lingering)", flush=True)
                    continue
                samples[(b, row)].append(r["cpu_per_1000"])
                print(f"round {rnd}: {b}, {row} at {rate}/s: {r['cpu_per_1000']:.4f} CPU s per 1,000, "
                      f"{r['fail_pct']:.2f}% failed", flush=True)
    for row, rate in rows:
        cur, old = samples[("this build", row)], samples[("baseline", row)]
        what = row if a.memory else f"{row} at {rate}/s"
        print(f"{what}: this build {[round(x, 4) for x in cur]}, baseline "
              f"{[round(x, 4) for x in old]}; ratio of medians "
              f"{statistics.median(cur) / statistics.median(old):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
