#!/usr/bin/env python3
"""How long a restarted supernode takes to join its farm again.

    loadtest/soak/rejoin.py [--nodes 5] [--node sn0] [--mode kill|term]
                            [--rounds 4] [--work DIR]

Starts an idle `ringmesh dev` farm (release build, no authentication),
then --rounds times stops --node (SIGKILL, or SIGTERM: drain and
hand-off), starts it again at once with the same flags, and reads its log
for the time from its start to `joined the ring`, or to `founded a new
ring` (which for a node of a running farm is a split, and fails the run).
The node asked is the first by default: the one allowed to found a ring
(--bootstrap-after 2), so a slow join shows as a split. Prints one line a
round and exits 1 if any round split the farm or took --max-join seconds
or more (default 2.5: a join takes tens of milliseconds, and one that
waited for a lost message's retry, 3 s). Everything listens on 127.0.0.1; every process started here is
stopped by its PID. Python standard library only.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import BIN, port_block_free, stop  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--node", default="sn0")
    ap.add_argument("--mode", choices=("kill", "term"), default="kill")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-join", type=float, default=2.5)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    if not 2 <= a.nodes <= 20 or not 1 <= a.rounds <= 100:
        sys.exit("rejoin: --nodes 2..20, --rounds 1..100")
    work = a.work or tempfile.mkdtemp(prefix="ringmesh-rejoin-")
    os.makedirs(work, exist_ok=True)
    port = next((p for p in range(30000, 38000, 1000) if port_block_free(p)), None)
    if port is None:
        sys.exit("rejoin: no free block of 900 ports on 127.0.0.1")
    farm_json = os.path.join(work, "farm.json")
    dev = subprocess.Popen([os.path.join(BIN, "ringmesh"), "dev", "--json", "--auth", "none",
                            "--nodes", str(a.nodes), "--sip-port", str(port),
                            "--data", os.path.join(work, "farm"), "--log", "info"],
                           stdout=open(farm_json, "w"), stderr=open(os.path.join(work, "dev.err"), "w"))
    failures, pid = [], None
    try:
        deadline = time.time() + 90
        nodes = []
        while not nodes:
            if time.time() > deadline or dev.poll() is not None:
                sys.exit(f"rejoin: the farm did not start; see {work}")
            time.sleep(0.2)
            with open(farm_json) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            if any(x.get("event") == "ready" for x in lines):
                nodes = [x for x in lines if x.get("event") == "node"]
        node = next((x for x in nodes if x["name"] == a.node), None)
        if node is None:
            sys.exit(f"rejoin: no node {a.node} in a farm of {a.nodes}")
        time.sleep(3)
        pid, ours = node["pid"], False
        for rnd in range(a.rounds):
            os.kill(pid, signal.SIGKILL if a.mode == "kill" else signal.SIGTERM)
            if ours:
                os.waitpid(pid, 0)
            else:
                # A child of `ringmesh dev`, which reaps it.
                while os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.02)
            log = os.path.join(work, f"{a.node}-{rnd}.log")
            t0 = time.time()
            p = subprocess.Popen(node["argv"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
            pid, ours = p.pid, True
            outcome = None
            while outcome is None and time.time() - t0 < 40:
                with open(log) as f:
                    text = f.read()
                if "founded a new ring" in text:
                    outcome = "split"
                elif "joined the ring" in text:
                    outcome = "joined"
                else:
                    time.sleep(0.02)
            took = time.time() - t0
            print(f"round {rnd}: {a.mode}, {outcome or 'no join'} after {took:.2f} s", flush=True)
            if outcome != "joined":
                failures.append(f"round {rnd}: {outcome or 'no join within 40 s'}")
            elif took >= a.max_join:
                failures.append(f"round {rnd}: joined after {took:.2f} s")
            time.sleep(5)
    finally:
        if pid is not None and ours:
            stop(pid)
        stop(dev.pid)
    if failures:
        print(f"rejoin FAILED (logs in {work}): " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
