#!/usr/bin/env python3
"""Ringmesh vs Kamailio, side by side: `make bench`.

    loadtest/bench/bench.py [--quick] [--out docs/benchmarks.md] [--work DIR]
                            [--port-base 17100] [--server-cpu 1] [--load-cpu 0]
                            [--baseline OTHER/ringmesh] [--only single,farm,...]

In one run on one machine, every server pinned to --server-cpu and every
load generator to --load-cpu, drive the same scenarios at the same offered
rates against
  (a) one Ringmesh supernode   `ringmesh supernode --auth none --sip udp:...`
  (b) a 3-supernode farm, k=3  `ringmesh dev --auth none --nodes 3 --json`
                               (its children inherit the CPU affinity)
  (c) Kamailio                 `loadtest/kamailio/run-kamailio.sh --daemon`
  (e) a 1-supernode farm       `ringmesh dev --auth none --nodes 1 --json`
  (f) a 3-node Kamailio cluster with DMQ usrloc replication (every node
      holds every contact), the anchor a carrier would otherwise run:
                               `run-kamailio.sh --daemon --dmq SEED PORT` x3
with both sipp and ringmesh-load, and
  (d) one supernode with digest `ringmesh dev --auth digest --nodes 1 --users 5000`
with ringmesh-load (REGISTER only: each user registered, then refreshed with
its nonce and a rising nc), and print (and write to --out, under the
heading "## Ringmesh vs Kamailio") a table of: the knee (highest
offered rate with < 0.1% failed, the rate kept, and p99 under a bound),
latency percentiles (ringmesh-load, µs), server CPU seconds per 1,000
requests, memory per binding, goodput at 2x the knee, and the
Ringmesh/Kamailio ratios, the targets met or not, and what overload
control shed at each step (nothing may be shed below 80% of a knee).

Everything runs at normal scheduling priority, as a pod does: a raised
priority hides exactly the scheduling noise a node must tolerate.

With --baseline, the one-supernode, farm and digest rows are also run with another
`ringmesh` binary (say, the previous commit's release build) in the same
run, as extra columns, and the report gives each knee as a ratio to the
baseline's: a change is judged against the same machine and the same
minutes, not against figures from another day.

sipp sends to the first node of a farm or cluster; ringmesh-load spreads
its handsets over every node, and a call's caller and callee are on
different nodes.

Scenarios: REGISTER without auth (distinct users: every REGISTER creates a
binding) and calls (INVITE/100/180/200/ACK/BYE/200 through the
record-routing proxy, callees registered first).

--quick is a smoke version (about 8 minutes): shorter steps, fewer of them,
no wait for memory to settle. The full run takes about 35-40 minutes.

Every process started here is stopped by its PID (SIGTERM, then SIGKILL);
every load run is bounded by count, duration and `timeout`; everything
listens on 127.0.0.1. Python standard library only.
"""
import argparse
import atexit
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIPP_DIR = os.path.join(ROOT, "loadtest", "sipp")
KAM_DIR = os.path.join(ROOT, "loadtest", "kamailio")
sys.path.insert(0, KAM_DIR)
import bench_first_figures as bff  # noqa: E402  (its /proc, kamcmd and sipp helpers)

CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "ringmesh.test"
BIN = os.path.join(ROOT, "target", "release")
CLEAN_FAIL_PCT = 0.1
# The same bound for every server: a run whose p99 exceeds it has
# "exploded" (queues grow faster than they drain).
P99_LIMIT_US = {"register": 100_000, "call": 100_000}
# Target: p99 INVITE -> 200 at 2x Kamailio's clean knee.
CALL_P99_TARGET_US = 10_000

STARTED = []  # (pid, what) of every server started, stopped at exit
# The servers with knee searches, in the report's column order.
SERVERS = ("single", "single_base", "farm1", "farm", "farm_base", "kamailio", "kamailio_dmq")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def q(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


# ---- process bookkeeping -----------------------------------------------------

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop(pid, wait=20.0):
    """SIGTERM to our own process `pid`, SIGKILL after `wait` s."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            if not alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop_all():
    for pid, _ in reversed(STARTED):
        stop(pid)
    STARTED.clear()


def tree_pids(pid):
    """pid and every descendant."""
    children = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(e))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_parents(pid):
    """The ancestors of `pid` (to check a PID is still the process we mean)."""
    out = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            break
        pid = int(st[st.rindex(")") + 2:].split()[1])
        out.append(pid)
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        t += int(fields[11]) + int(fields[12])
    return t


def rss_bytes(pids):
    """Proportional set size (PSS) of the processes: resident memory with
    pages shared between them (Kamailio's shm) counted once, not per
    process."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        t += int(line.split()[1]) * 1024
        except OSError:
            pass
    return t


def metric_sum(addrs, name):
    total = 0.0
    for a in addrs:
        try:
            with urllib.request.urlopen(f"http://{a}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


# ---- servers -----------------------------------------------------------------

class Server:
    """A server under test: `pids()` are the processes whose CPU counts."""
    label = ""
    kind = ""
    # Users the load registers again and again with their password (None:
    # distinct users, no authentication).
    digest_users = None

    def pids(self):
        return tree_pids(self.pid)

    def targets(self):
        return [self.sip]

    def replicas(self):
        """How many copies of each binding the server keeps."""
        return 1


def flags_for_load(binary, command):
    """The flags the load generators need, where `binary command` has them
    (a baseline built earlier lacks the rule and the flag alike):
    `--trusted load=127.0.0.1`, since they send from 127.0.0.1 far above any
    phone's rate, on purpose, and are listed as trusted (as a carrier lists
    its front ends) so that the per-source rate limit, which keeps its
    production defaults, is not what is measured; and
    `--allow-loopback-contacts true`, since their phones are on 127.0.0.1."""
    try:
        help_text = subprocess.run([binary, command, "--help"], capture_output=True, text=True,
                                   timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    flags = []
    if "--trusted" in help_text:
        flags += ["--trusted", "load=127.0.0.1"]
    if "--allow-loopback-contacts" in help_text:
        flags += ["--allow-loopback-contacts", "true"]
    return flags


class Supernode(Server):
    label, kind = "Ringmesh, 1 supernode", "ringmesh"
    binary = os.path.join(BIN, "ringmesh")

    def __init__(self, a, port, work):
        self.sip = f"127.0.0.1:{port}"
        self.metrics = f"127.0.0.1:{port + 1}"
        data = os.path.join(work, f"sn_{port}")
        subprocess.run(["rm", "-rf", data], check=True)
        self.argv = ["taskset", "-c", str(a.server_cpu), self.binary, "supernode",
                     "--auth", "none", "--sip", f"udp:{self.sip}", "--metrics", self.metrics,
                     "--data", data, "--log", "warn", *flags_for_load(self.binary, "supernode")]
        self.logf = open(data + ".log", "w")
        p = subprocess.Popen(self.argv, stdout=self.logf, stderr=subprocess.STDOUT)
        self.pid = p.pid
        STARTED.append((self.pid, "supernode"))
        wait_options(self.sip, 10)

    def metrics_addrs(self):
        return [self.metrics]

    def close(self):
        stop(self.pid)
        STARTED[:] = [s for s in STARTED if s[0] != self.pid]


class Farm(Server):
    label, kind = "Ringmesh, 3-node farm (k=3)", "ringmesh"
    binary = os.path.join(BIN, "ringmesh")
    dev_args = ["--auth", "none", "--nodes", "3", "--replicas", "3"]

    def __init__(self, a, port, work):
        data = os.path.join(work, f"farm_{port}")
        subprocess.run(["rm", "-rf", data], check=True)
        os.makedirs(data)
        self.json_path = os.path.join(data, "farm.json")
        self.argv = ["taskset", "-c", str(a.server_cpu), self.binary, "dev", *self.dev_args, "--json",
                     "--sip-port", str(port), "--data", data, "--log", "warn",
                     *flags_for_load(self.binary, "dev")]
        self.out = open(self.json_path, "w")
        self.errf = open(os.path.join(data, "dev.err"), "w")
        p = subprocess.Popen(self.argv, stdout=self.out, stderr=self.errf)
        self.pid = p.pid
        STARTED.append((self.pid, "ringmesh dev"))
        self.nodes = []
        deadline = time.time() + 60
        while time.time() < deadline:
            self.out.flush()
            with open(self.json_path) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            if any(x.get("event") == "ready" for x in lines):
                self.nodes = [x for x in lines if x.get("event") == "node"]
                break
            if not alive(self.pid):
                raise SystemExit(f"ringmesh dev exited; see {data}")
            time.sleep(0.2)
        if len(self.nodes) != int(self.dev_args[self.dev_args.index("--nodes") + 1]):
            raise SystemExit(f"the farm was not ready within 60 s; see {data}")
        self.sip = self.nodes[0]["sip"]

    def targets(self):
        return [n["sip"] for n in self.nodes]

    def replicas(self):
        return int(self.dev_args[self.dev_args.index("--replicas") + 1])

    def metrics_addrs(self):
        return [n["metrics"] for n in self.nodes]

    def close(self):
        # The supernodes (children of `ringmesh dev`, started for this run)
        # first, without the graceful hand-off of every binding: the data
        # is thrown away. Then `ringmesh dev` stops its control plane.
        for n in self.nodes:
            if self.pid in tree_parents(n["pid"]):
                try:
                    os.kill(n["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        stop(self.pid, wait=40)
        STARTED[:] = [s for s in STARTED if s[0] != self.pid]


class Farm1(Farm):
    """The farm's code path (overlay, replication machinery, control
    plane) with one supernode: what the farm costs over a bare supernode."""
    label = "Ringmesh, 1-node farm"
    dev_args = ["--auth", "none", "--nodes", "1", "--replicas", "1"]


class DigestNode(Farm):
    """One supernode with digest authentication (`ringmesh dev --nodes 1`,
    its control plane included in the CPU): demo subscribers user0… that
    the load registers and then refreshes with their password, reusing each
    nonce with a rising nc (RFC 7616), so that every REGISTER pays the
    digest check and the (nonce, nc) tracking."""
    label = "Ringmesh, 1 supernode, digest"
    digest_users = 5_000
    dev_args = ["--auth", "digest", "--nodes", "1", "--replicas", "1",
                "--users", str(digest_users), "--password", "secret"]


class Kamailio(Server):
    label, kind = "Kamailio 5.6 (children=2)", "kamailio"

    def __init__(self, a, port, work):
        self.sip = f"127.0.0.1:{port}"
        self.run_dir = os.path.join(work, f"kam_{port}")
        subprocess.run(["rm", "-rf", self.run_dir], check=True)
        self.argv = [os.path.join(KAM_DIR, "run-kamailio.sh"), "--daemon", "--cpu", str(a.server_cpu),
                     "--run-dir", self.run_dir, str(port)]
        out = subprocess.run(self.argv, check=True, capture_output=True, text=True).stdout
        self.pid = int(out.strip().splitlines()[-1])
        STARTED.append((self.pid, "kamailio"))

    def metrics_addrs(self):
        return []

    def shm(self):
        try:
            return bff.shm_used(self.run_dir, "used_size"), bff.shm_used(self.run_dir, "real_used_size")
        except Exception:  # noqa: BLE001  (kamcmd missing or the server gone)
            return None

    def contacts(self):
        """The contacts the node holds (a list of one, as for a cluster)."""
        try:
            return [bff.registered(self.run_dir)]
        except Exception:  # noqa: BLE001
            return [0]

    def close(self):
        stop(self.pid)
        STARTED[:] = [s for s in STARTED if s[0] != self.pid]


class KamailioDmq(Server):
    """Three Kamailio nodes that replicate usrloc to each other by DMQ
    (dmq_usrloc: every contact saved on one node is sent to the two
    others), all on the server CPU, as the farm's three supernodes are.
    Node i listens on PORT+10i; nodes 1 and 2 find the cluster through
    node 0, node 0 through node 1."""
    label, kind = "Kamailio 5.6 DMQ cluster, 3 nodes (children=2 each)", "kamailio"
    nodes = 3

    def __init__(self, a, port, work):
        self.ports = [port + 10 * i for i in range(self.nodes)]
        self.sip = f"127.0.0.1:{port}"
        self.run_dirs, self.node_pids = [], []
        for i, p in enumerate(self.ports):
            run_dir = os.path.join(work, f"kamdmq_{p}")
            subprocess.run(["rm", "-rf", run_dir], check=True)
            seed = self.ports[1] if i == 0 else self.ports[0]
            argv = [os.path.join(KAM_DIR, "run-kamailio.sh"), "--daemon", "--cpu", str(a.server_cpu),
                    "--run-dir", run_dir, "--dmq", str(seed), str(p)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            pid = int(out.strip().splitlines()[-1])
            STARTED.append((pid, "kamailio dmq"))
            self.run_dirs.append(run_dir)
            self.node_pids.append(pid)
        self.pid = self.node_pids[0]
        # Every node must know the two others before any load.
        deadline = time.time() + 30
        while time.time() < deadline:
            if all(self.active_nodes(d) == self.nodes for d in self.run_dirs):
                return
            time.sleep(0.5)
        raise SystemExit(f"the DMQ cluster did not form within 30 s; see {work}/kamdmq_*")

    @staticmethod
    def active_nodes(run_dir):
        out = subprocess.run(["kamcmd", "-s", f"unix:{run_dir}/ctl.sock", "dmq.list_nodes"],
                             capture_output=True, text=True, timeout=10).stdout
        return out.count("status: active")

    def pids(self):
        return [p for pid in self.node_pids for p in tree_pids(pid)]

    def targets(self):
        return [f"127.0.0.1:{p}" for p in self.ports]

    def metrics_addrs(self):
        return []

    def shm(self):
        try:
            used = [bff.shm_used(d, "used_size") for d in self.run_dirs]
            real = [bff.shm_used(d, "real_used_size") for d in self.run_dirs]
            return sum(used), sum(real)
        except Exception:  # noqa: BLE001  (kamcmd missing or a node gone)
            return None

    def contacts(self):
        """The contacts each node holds (replication complete: all equal)."""
        try:
            return [bff.registered(d) for d in self.run_dirs]
        except Exception:  # noqa: BLE001
            return [0] * self.nodes

    def close(self):
        for pid in self.node_pids:
            stop(pid)
        STARTED[:] = [s for s in STARTED if s[0] not in self.node_pids]


def baseline_of(cls, binary):
    """The same server run by another `ringmesh` binary."""
    return type(cls.__name__ + "Baseline", (cls,),
                {"binary": binary, "label": cls.label + " (baseline)"})


def wait_options(addr, within):
    import socket
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    lport = s.getsockname()[1]
    deadline = time.time() + within
    n = 0
    while time.time() < deadline:
        n += 1
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKb{n}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=p{n}\r\nTo: <sip:{host}:{port}>\r\n"
               f"Call-ID: bench-probe-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            s.sendto(msg, (host, int(port)))
            if s.recv(65535).startswith(b"SIP/2.0 200"):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{addr} did not answer OPTIONS within {within} s")


# ---- load ----------------------------------------------------------------------

class Users:
    """Hands out disjoint user ranges, so every REGISTER makes a new binding."""

    def __init__(self):
        self.next = 1_000_000

    def take(self, n):
        s = self.next
        self.next += n
        return s


def shed_total(server):
    """New requests overload control answered 503 so far (None: not Ringmesh)."""
    if server.kind != "ringmesh":
        return None
    return metric_sum(server.metrics_addrs(), "ringmesh_overload_shed_total")


def shed_since(server, before):
    return None if before is None else shed_total(server) - before


def server_cpu(server):
    pids = server.pids()
    return pids, cpu_ticks(pids)


def run_rml(a, server, scenario, rate, seconds, users, name, extra=(), refresh=None):
    """One ringmesh-load run; returns a result dict. REGISTERs are of
    distinct users, unless the server's digest users or `refresh` users
    (0..refresh-1) are registered and then refreshed over and over."""
    out = os.path.join(a.work, f"{name}.json")
    argv = ["timeout", str(seconds + 80), "taskset", "-c", str(a.load_cpu),
            os.path.join(BIN, "ringmesh-load"), "--no-progress", "--json-out", out,
            "--rate", str(rate), "--duration", str(seconds), "--timeout-ms", "8000",
            "--drain-secs", "20", "--sockets", "4"]
    if isinstance(server, Farm):
        argv += ["--farm-json", server.json_path]
    else:
        for t in server.targets():
            argv += ["--target", t]
    if scenario == "register" and (server.digest_users or refresh):
        argv += ["--refresh", "--users", str(server.digest_users or refresh), "--user-start", "0"]
        if server.digest_users:
            argv += ["--password", "secret"]
    elif scenario == "register":
        n = int(rate * seconds)
        argv += ["--users", str(n), "--user-start", str(users.take(n)), "--count", str(n)]
    else:
        argv += ["--scenario", "call", "--users", str(a.callees), "--user-start",
                 str(users.take(a.callees)), "--setup-rate", "5000"]
    argv += list(extra)
    pids, c0 = server_cpu(server)
    drops0 = bff.udp_rcvbuf_errors()
    shed0 = shed_total(server)
    t0 = time.time()
    p = subprocess.run(argv, capture_output=True, text=True)
    wall = time.time() - t0
    cpu = (cpu_ticks(pids) - c0) / CLK_TCK
    try:
        with open(out) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        log(f"ringmesh-load failed (rc {p.returncode}): {p.stderr[-2000:]}")
        return None
    ops, meas = rep["ops"], rep["measure"]
    lat = rep["latency_us"]["register" if scenario == "register" else "invite_200"]
    method = "REGISTER" if scenario == "register" else "INVITE"
    r503 = int(rep.get("status", {}).get(method, {}).get("503", 0))
    r401 = int(rep.get("status", {}).get(method, {}).get("401", 0))
    started = ops["started"]
    return {
        "tool": "ringmesh-load", "scenario": scenario, "offered": rate, "seconds": seconds,
        "started": started, "ok": ops["succeeded"], "failed": ops["failed"],
        "fail_pct": ops["fail_pct"], "sent_rate": meas["achieved_send_rate"],
        # Successes per second from the first request to the last success:
        # a run that only completes thanks to retransmissions stretches.
        "goodput": meas["completed_rate"],
        "p50": lat.get("p50", 0), "p90": lat.get("p90", 0), "p99": lat.get("p99", 0),
        "p999": lat.get("p999", 0), "max": lat.get("max", 0),
        "cpu": cpu, "cpu_per_1000": 1000 * cpu / max(started, 1), "wall": wall,
        "core_use": cpu / max(meas["send_elapsed_s"], 1e-9), "r503": r503, "r401": r401,
        "drops": bff.udp_rcvbuf_errors() - drops0, "gen_cpu": sum(rep["generator_cpu_s"].values()),
        "shed": shed_since(server, shed0), "failures": rep.get("failures", {}), "cmd": q(argv),
    }


def run_sipp(a, server, scenario, rate, seconds, users, name):
    """One sipp run (REGISTER storm, or UAS + UAC calls); returns a result dict."""
    n = int(rate * seconds)
    lp = a.port_base + 90
    target = server.sip
    if scenario == "register":
        csv = os.path.join(a.work, f"{name}.csv")
        with open(csv, "w") as f:
            subprocess.run([os.path.join(SIPP_DIR, "gen_users.sh"), str(n), DOMAIN, "secret", "user",
                            str(users.take(n))], stdout=f, check=True)
        args = ["-sf", os.path.join(SIPP_DIR, "reg_noauth.xml"), "-inf", csv, "-i", "127.0.0.1",
                "-p", str(lp), "-t", "u1", "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", "15000",
                *bff.SIPP_FAST, target]
        pids, c0 = server_cpu(server)
        drops0 = bff.udp_rcvbuf_errors()
        shed0 = shed_total(server)
        st, rc, gen_cpu, argv = sipp(a, args, seconds + 20, os.path.join(a.work, f"{name}.log"))
        cpu = (cpu_ticks(pids) - c0) / CLK_TCK
        cmds = [q(argv)]
    else:
        csv = os.path.join(a.work, f"{name}_callees.csv")
        with open(csv, "w") as f:
            subprocess.run([os.path.join(SIPP_DIR, "gen_users.sh"), str(a.callees), DOMAIN, "secret",
                            "user", str(users.take(a.callees))], stdout=f, check=True)
        uas_port, uac_port = lp + 1, lp + 2
        reg = ["-sf", os.path.join(SIPP_DIR, "reg_noauth.xml"), "-inf", csv, "-i", "127.0.0.1",
               "-p", str(uas_port), "-r", "5000", "-m", str(a.callees), *bff.SIPP_FAST, target]
        st, rc, _, reg_argv = sipp(a, reg, 20, os.path.join(a.work, f"{name}_reg.log"))
        if st["ok"] < a.callees:
            log(f"  callee registration incomplete: {st}")
        uas_argv = ["timeout", str(seconds + 40), "taskset", "-c", str(a.load_cpu), "sipp",
                    "-sf", os.path.join(SIPP_DIR, "uas_noauth.xml"), "-i", "127.0.0.1", "-p", str(uas_port),
                    "-t", "u1", "-m", str(n), *bff.SIPP_FAST, "-nostdin", "-timeout", f"{seconds + 30}s",
                    target]
        uas_log = open(os.path.join(a.work, f"{name}_uas.log"), "w")
        uas = subprocess.Popen(uas_argv, stdout=uas_log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        args = ["-sf", os.path.join(SIPP_DIR, "uac_call_noauth.xml"), "-inf", csv, "-i", "127.0.0.1",
                "-p", str(uac_port), "-t", "u1", "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", "15000",
                *bff.SIPP_FAST, target]
        pids, c0 = server_cpu(server)
        drops0 = bff.udp_rcvbuf_errors()
        shed0 = shed_total(server)
        st, rc, gen_cpu, argv = sipp(a, args, seconds + 20, os.path.join(a.work, f"{name}_uac.log"))
        cpu = (cpu_ticks(pids) - c0) / CLK_TCK
        try:
            uas.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop(uas.pid, wait=2)
        uas_log.close()
        cmds = [q(reg_argv), q(uas_argv), q(argv)]
    elapsed = st["elapsed"] or seconds
    failed = n - st["ok"]
    return {
        "tool": "sipp", "scenario": scenario, "offered": rate, "seconds": seconds, "started": n,
        "ok": st["ok"], "failed": failed, "fail_pct": 100.0 * failed / max(n, 1),
        "sent_rate": st["created"] / max(elapsed, 1e-9), "goodput": st["ok"] / max(elapsed, 1e-9),
        "p50": None, "p90": None, "p99": None, "p999": None, "max": None,
        "cpu": cpu, "cpu_per_1000": 1000 * cpu / max(n, 1), "wall": elapsed,
        "core_use": cpu / max(elapsed, 1e-9), "r503": None,
        "drops": bff.udp_rcvbuf_errors() - drops0, "gen_cpu": gen_cpu, "failures": {},
        "shed": shed_since(server, shed0),
        "cmd": " ; ".join(cmds),
    }


def sipp(a, args, bound, logfile):
    argv = ["timeout", str(bound + 10), "taskset", "-c", str(a.load_cpu), "sipp", *args,
            "-nostdin", "-timeout", f"{bound}s", "-timeout_error"]
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(logfile, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(logfile) as f:
        st = bff.parse_sipp(f.read())
    gen = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return st, rc, gen, argv


def clean(r):
    """A step below the knee: < 0.1% failed, the offered rate kept, and
    (ringmesh-load) p99 within the bound."""
    if r is None:
        return False
    if r["fail_pct"] >= CLEAN_FAIL_PCT:
        return False
    if r["goodput"] < 0.95 * r["offered"]:
        return False
    if r["p99"] is not None and r["p99"] > P99_LIMIT_US[r["scenario"]]:
        return False
    return True


def knee(a, server, tool, scenario, start, users, tag):
    """Steps the offered rate up (x1.5) until a step is not clean (or, when
    the first step is not, down (/1.5) until one is), then bisects once or
    twice (geometric mean). Bounded in steps."""
    steps, best, worst = [], None, None
    rate = start
    run = run_rml if tool == "ringmesh-load" else run_sipp
    cap = a.max_rate[(tool, scenario)]
    for i in range(a.knee_steps):
        rate = int(min(rate, cap))
        log(f"  {server.label} / {tool} / {scenario}: {rate}/s")
        r = run(a, server, scenario, rate, a.step_seconds, users, f"{tag}_{tool}_{scenario}_{rate}")
        steps.append(r)
        # An overloaded server retransmits and times out for a while (a
        # Kamailio cluster's KDMQ requests up to Timer F): let it drain.
        time.sleep(a.settle if clean(r) else 5 * a.settle)
        if clean(r):
            best = r
            if rate >= cap or worst is not None:
                break
            rate = rate * 1.5
        else:
            worst = r
            if best is not None:
                break
            rate = rate / 1.5
    for _ in range(a.bisections):
        if best is None or worst is None:
            break
        mid = int((best["offered"] * worst["offered"]) ** 0.5)
        if mid <= best["offered"] * 1.04:
            break
        log(f"  {server.label} / {tool} / {scenario}: {mid}/s (bisect)")
        r = run(a, server, scenario, mid, a.step_seconds, users, f"{tag}_{tool}_{scenario}_{mid}")
        steps.append(r)
        time.sleep(a.settle if clean(r) else 5 * a.settle)
        if clean(r):
            best = r
        else:
            worst = r
    limited = best is not None and worst is None  # never failed: capped by the generator
    return {"best": best, "worst": worst, "steps": steps, "capped": limited}


# ---- the run -------------------------------------------------------------------

def machine():
    model = cores = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.*)", out).group(1).strip()
        cores = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M).group(1)
    except Exception:  # noqa: BLE001
        pass
    kernel = os.uname().release
    ver = ""
    for cmd in (["kamailio", "-v"], ["sipp", "-v"]):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            first = (o.stdout + o.stderr).strip().splitlines()
            ver += (first[0] if first else "") + "; "
        except Exception:  # noqa: BLE001
            pass
    return {"model": model, "cores": cores, "kernel": kernel, "versions": ver.strip("; ")}


def wait_quiet(server, limit):
    """Waits (at most `limit` s) until no answered transaction lingers in
    Timer J: their memory and timers are not what is measured. Returns the
    seconds waited."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if metric_sum(server.metrics_addrs(), "ringmesh_sip_transactions_lingering") == 0:
            break
        time.sleep(1)
    return time.time() - t0


def memory_phase(a, server, users, tag):
    """Registers a.mem_bindings distinct users, waits until no transaction
    lingers (full run), and returns RSS growth per binding per replica."""
    if not isinstance(server, (Supernode, Farm)):
        return None
    replicas = server.replicas()
    pids = server.pids()
    rss0 = rss_bytes(pids)
    rate = a.mem_rate
    r = run_rml(a, server, "register", rate, a.mem_bindings / rate, users, f"{tag}_memory")
    if r is None:
        return None
    waited = 0.0 if a.quick else wait_quiet(server, 60)
    rss1 = rss_bytes(pids)
    return {"bindings": r["ok"], "replicas": replicas, "rss_delta": rss1 - rss0,
            "per_binding": (rss1 - rss0) / max(r["ok"] * replicas, 1), "waited": waited,
            "lingering_left": metric_sum(server.metrics_addrs(), "ringmesh_sip_transactions_lingering"),
            "cmd": r["cmd"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke version, about 5 minutes")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--work", default="/tmp/ringmesh-bench")
    p.add_argument("--port-base", type=int, default=17100)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--only", default="",
                   help="comma list of servers: single,farm1,farm,kamailio,kamailio_dmq,digest "
                        "(and single_base,farm_base,digest_base)")
    p.add_argument("--baseline", default=None,
                   help="another ringmesh binary: its one-supernode and farm rows, same run")
    a = p.parse_args()
    for b in ("ringmesh", "ringmesh-load"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            raise SystemExit(f"{BIN}/{b} missing: cargo build --release -p ringmesh -p ringmesh-load")
    for tool in ("sipp", "kamailio", "kamcmd", "taskset"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            raise SystemExit(f"{tool} missing (Debian: sip-tester, kamailio, util-linux)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: one for the servers, one for the generators")
    os.makedirs(a.work, exist_ok=True)
    # Sizes: full run about 20-25 minutes, --quick about 5.
    a.step_seconds = 3 if a.quick else 5
    a.knee_steps = 4 if a.quick else 9
    a.bisections = 0 if a.quick else 2
    # --quick searches knees with ringmesh-load only (sipp still gives the
    # same-offered-rate CPU rows).
    a.knee_tools = ["ringmesh-load"] if a.quick else ["ringmesh-load", "sipp"]
    a.settle = 1.0 if a.quick else 2.0
    a.callees = 2000
    a.mem_bindings = 60_000 if a.quick else 300_000
    a.mem_rate = 20_000
    a.overload_seconds = 4 if a.quick else 8
    # What each generator can offer on one core of this machine (loadtest/README.md).
    a.max_rate = {("ringmesh-load", "register"): 90_000, ("ringmesh-load", "call"): 20_000,
                  ("sipp", "register"): 40_000, ("sipp", "call"): 8_000}
    only = set(x for x in a.only.split(",") if x) or {"single", "farm1", "farm", "kamailio",
                                                       "kamailio_dmq", "digest",
                                                       "single_base", "farm_base", "digest_base"}
    if a.baseline and not os.access(a.baseline, os.X_OK):
        raise SystemExit(f"--baseline {a.baseline}: not an executable")
    if not a.baseline:
        only -= {"single_base", "farm_base", "digest_base"}
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))

    t_start = time.time()
    info = machine()
    log(f"machine: {info}")
    users = Users()
    res = {}
    ports = {"single": a.port_base, "farm": a.port_base + 1000, "kamailio": a.port_base + 200,
             "kamailio_dmq": a.port_base + 600, "farm1": a.port_base + 5000,
             "single_base": a.port_base + 400, "farm_base": a.port_base + 2000,
             "digest": a.port_base + 3000, "digest_base": a.port_base + 4000}
    makers = {"single": Supernode, "farm1": Farm1, "farm": Farm, "kamailio": Kamailio,
              "kamailio_dmq": KamailioDmq, "digest": DigestNode}
    if a.baseline:
        makers["single_base"] = baseline_of(Supernode, a.baseline)
        makers["farm_base"] = baseline_of(Farm, a.baseline)
        makers["digest_base"] = baseline_of(DigestNode, a.baseline)
    # One ladder for every server, so that the same offered rates are
    # compared: start x 1.5^k.
    starts = {"register": 12_000 if a.quick else 5_000, "call": 2_000 if a.quick else 1_000}
    fixed = {"register": 10_000, "call": 1_000}
    for name in SERVERS:
        if name not in only:
            continue
        make = lambda: makers[name](a, ports[name], a.work)  # noqa: E731
        r = res[name] = {"label": makers[name].label}
        log(f"== {r['label']}")
        # Memory: distinct bindings on a fresh server.
        if makers[name].kind != "kamailio":
            s = make()
            r["memory"] = memory_phase(a, s, users, name)
            s.close()
        for scenario in ("register", "call"):
            # Same offered rate for everyone, sipp (CPU per request).
            s = make()
            kam_shm0 = s.shm() if s.kind == "kamailio" else None
            log(f"  fixed rate {fixed[scenario]}/s, sipp")
            r[("fixed", scenario)] = run_sipp(a, s, scenario, fixed[scenario], a.step_seconds, users,
                                              f"{name}_fixed_{scenario}")
            time.sleep(a.settle)
            if s.kind == "kamailio" and scenario == "register":
                # Per contact per node that holds it (a DMQ cluster: every node).
                shm1, contacts = s.shm(), s.contacts()
                if kam_shm0 and shm1 and sum(contacts):
                    r["memory"] = {"bindings": max(contacts), "replicas": len(contacts),
                                   "per_node": contacts,
                                   "used_per": (shm1[0] - kam_shm0[0]) / sum(contacts),
                                   "real_per": (shm1[1] - kam_shm0[1]) / sum(contacts)}
            for tool in a.knee_tools:
                r[("knee", scenario, tool)] = knee(a, s, tool, scenario, starts[scenario], users, name)
            s.close()
            # Overload: 2x the knee (ringmesh-load), fresh server.
            k = r[("knee", scenario, "ringmesh-load")]["best"]
            if k:
                rate = min(int(2 * k["offered"]), a.max_rate[("ringmesh-load", scenario)])
                s = make()
                log(f"  overload {rate}/s (2x knee {k['offered']}/s)")
                o = run_rml(a, s, scenario, rate, a.overload_seconds, users, f"{name}_overload_{scenario}")
                if o:
                    o["rss_after"] = rss_bytes(s.pids())
                r[("overload", scenario)] = o
                s.close()
    # REGISTER with digest authentication: refreshes reusing each nonce.
    for name in ("digest", "digest_base"):
        if name not in only:
            continue
        r = res[name] = {"label": makers[name].label}
        log(f"== {r['label']}")
        s = makers[name](a, ports[name], a.work)
        log(f"  fixed rate {fixed['register']}/s, ringmesh-load")
        r[("fixed", "register")] = run_rml(a, s, "register", fixed["register"], a.step_seconds, users,
                                           f"{name}_fixed_register")
        time.sleep(a.settle)
        r[("knee", "register", "ringmesh-load")] = knee(a, s, "ringmesh-load", "register",
                                                        starts["register"], users, name)
        s.close()
    # Calls at 2x Kamailio's clean knee, and the farm's cross-node latency.
    kam_call = res.get("kamailio", {}).get(("knee", "call", "ringmesh-load"), {}).get("best")
    if kam_call and "single" in res:
        s = Supernode(a, ports["single"], a.work)
        rate = 2 * kam_call["offered"]
        log(f"== calls at 2x Kamailio's knee: {rate}/s")
        res["single"][("calls_2x_kam",)] = run_rml(a, s, "call", rate, a.step_seconds * 2, users,
                                                    "single_calls_2x_kam")
        s.close()
    farm_call = res.get("farm", {}).get(("knee", "call", "ringmesh-load"), {}).get("best")
    if farm_call:
        s = Farm(a, ports["farm"], a.work)
        half = max(int(farm_call["offered"] / 2), 100)
        for routing in ("same", "cross"):
            log(f"== farm calls at half load ({half}/s), {routing} supernode")
            res["farm"][("latency", routing)] = run_rml(
                a, s, "call", half, a.step_seconds * 2, users, f"farm_latency_{routing}",
                extra=("--call-routing", routing))
            time.sleep(a.settle)
        s.close()
    stop_all()
    took = time.time() - t_start
    text = report(a, info, res, took)
    print(text)
    write_section(a.out, text)
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump({"machine": info, "took_s": took,
                   "results": {k: {str(kk): vv for kk, vv in v.items()} for k, v in res.items()}},
                  f, indent=1, default=str)
    log(f"done in {took / 60:.1f} min; written to {a.out} (raw: {a.work}/results.json)")
    return 0


# ---- the report ------------------------------------------------------------------

def fnum(x, d=0):
    if x is None:
        return "-"
    return f"{x:,.{d}f}"


def us(x):
    return "-" if x is None else f"{int(x):,}"


def report(a, info, res, took):
    L = []
    w = L.append
    w("## Ringmesh vs Kamailio")
    w("")
    w(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
      f"{' (--quick: a smoke run, not for quoting)' if a.quick else ''}, {took / 60:.0f} minutes. "
      f"Machine: {info['model']}, {info['cores']} CPUs, Linux {info['kernel']}; {info['versions']}.")
    w("")
    w(f"Command: `make bench` (= `loadtest/bench/bench.py{' --quick' if a.quick else ''}`). Every server "
      f"pinned to CPU {a.server_cpu} (`taskset`; the farm's three supernodes and its control plane "
      f"share it, as do the DMQ cluster's three Kamailio nodes), every generator to CPU {a.load_cpu}; UDP on 127.0.0.1; every process at normal "
      f"scheduling priority, as a pod runs (a shared box: other jobs may take some of both cores, so "
      f"compare within the table, not across runs).")
    w("")
    w("How to read it: **knee** = the highest offered rate of a step-up search (x1.5, then "
      f"{a.bisections} bisection(s); {a.step_seconds} s steps, distinct users) whose run had "
      f"< {CLEAN_FAIL_PCT}% failed, kept ≥ 95% of the offered rate, and (ringmesh-load) a p99 "
      f"under {P99_LIMIT_US['register'] // 1000} ms; \"≥\" when the generator's own ceiling came "
      "first. Latency: REGISTER → 200 or INVITE → 200, µs, from ringmesh-load at the knee (sipp's "
      "clock has 4 ms steps). CPU: utime+stime of the server process(es) (`/proc/PID/stat`, a "
      "process and its children), per 1,000 REGISTERs or calls. Overload: a fresh server offered "
      "2x its knee (ringmesh-load); goodput = successes per second of sending.")
    w("")
    servers = [n for n in SERVERS if n in res]
    every = servers + [n for n in ("digest", "digest_base") if n in res]

    def knee_cell(k):
        if not k:
            return "-"
        b = k["best"]
        if not b:
            return "none clean"
        ge = "≥ " if k["capped"] else ""
        return f"{ge}{fnum(b['offered'])}"

    w("| | " + " | ".join(res[n]["label"] for n in servers) + " |")
    w("|---|" + "---|" * len(servers))
    for scenario, what in (("register", "REGISTER"), ("call", "calls")):
        for tool in ("ringmesh-load", "sipp"):
            w(f"| {what}: knee /s ({tool}) | "
              + " | ".join(knee_cell(res[n].get(("knee", scenario, tool))) for n in servers) + " |")
        row = []
        for n in servers:
            k = res[n].get(("knee", scenario, "ringmesh-load"))
            b = k["best"] if k else None
            row.append(f"{us(b['p50'])} / {us(b['p90'])} / {us(b['p99'])} / {us(b['p999'])}" if b else "-")
        w(f"| {what}: p50 / p90 / p99 / p99.9 µs at the knee (ringmesh-load) | " + " | ".join(row) + " |")
        row = []
        for n in servers:
            k = res[n].get(("knee", scenario, "ringmesh-load"))
            b = k["best"] if k else None
            row.append(f"{fnum(b['cpu_per_1000'], 3)} ({fnum(100 * b['core_use'])}% of the core)" if b else "-")
        w(f"| {what}: server CPU s per 1,000 at the knee (ringmesh-load) | " + " | ".join(row) + " |")
        row, f = [], None
        for n in servers:
            f = res[n].get(("fixed", scenario))
            row.append(f"{fnum(f['cpu_per_1000'], 3)} ({fnum(f['fail_pct'], 2)}% failed)" if f else "-")
        w(f"| {what}: server CPU s per 1,000 at {fnum(f['offered']) if f else '?'}/s offered (sipp) | "
          + " | ".join(row) + " |")
        row = []
        for n in servers:
            o = res[n].get(("overload", scenario))
            k = res[n].get(("knee", scenario, "ringmesh-load"))
            if not o or not k or not k["best"]:
                row.append("-")
                continue
            ratio = o["goodput"] / k["best"]["offered"]
            row.append(f"{fnum(o['offered'])} offered: {fnum(o['goodput'])}/s ok ({fnum(100 * ratio)}% of "
                       f"the knee), {fnum(o['r503'])} × 503, {fnum(o['failed'] - (o['r503'] or 0))} other "
                       f"failures, p99 {us(o['p99'])} µs, memory (PSS) after {fnum(o.get('rss_after', 0) / 2**20)} MiB")
        w(f"| {what}: goodput at 2x the knee | " + " | ".join(row) + " |")
    row = []
    for n in servers:
        m = res[n].get("memory")
        if not m:
            row.append("-")
        elif "used_per" in m:
            held = "" if m["replicas"] == 1 else \
                f" per node holding it ({' / '.join(fnum(c) for c in m['per_node'])} contacts on the nodes)"
            row.append(f"{fnum(m['used_per'])} B shm payload ({fnum(m['real_per'])} B with the allocator's "
                       f"overhead){held}, {fnum(m['bindings'])} contacts")
        else:
            note = "" if m["lingering_left"] == 0 else \
                f", {fnum(m['lingering_left'])} transactions still lingering (Timer J) counted in"
            row.append(f"{fnum(m['per_binding'])} B memory (PSS) growth per binding per replica "
                       f"({fnum(m['bindings'])} bindings × {m['replicas']}{note})")
    w("| memory per binding | " + " | ".join(row) + " |")
    w("")
    if "digest" in res:
        digest_table(w, res)
    # Ratios and targets.
    k = res.get("kamailio", {})
    kd = res.get("kamailio_dmq", {})
    sn = res.get("single", {})
    f1 = res.get("farm1", {})
    fm = res.get("farm", {})

    def best(d, scenario, tool="ringmesh-load"):
        x = d.get(("knee", scenario, tool))
        return x["best"] if x and x["best"] else None

    targets = []
    kf, sf = k.get(("fixed", "register")), sn.get(("fixed", "register"))
    if kf and sf:
        ratio = sf["cpu_per_1000"] / max(kf["cpu_per_1000"], 1e-9)
        targets.append((f"REGISTER CPU ≤ ½ of Kamailio's at {fnum(kf['offered'])}/s offered (sipp)",
                        f"{fnum(sf['cpu_per_1000'], 3)} vs {fnum(kf['cpu_per_1000'], 3)} s per 1,000: "
                        f"ratio {ratio:.2f}", ratio <= 0.5))
    kb, sb, fb = best(k, "register"), best(sn, "register"), best(fm, "register")
    if kb and sb:
        ratio = sb["offered"] / kb["offered"]
        capped = sn[("knee", "register", "ringmesh-load")]["capped"]
        targets.append(("max REGISTER/s ≥ 2× Kamailio's (ringmesh-load)",
                        f"{'≥ ' if capped else ''}{fnum(sb['offered'])} vs {fnum(kb['offered'])}: "
                        f"ratio {'≥ ' if capped else ''}{ratio:.2f}", ratio >= 2))
    if kb and fb:
        ratio = fb["offered"] / kb["offered"]
        targets.append(("3-node farm REGISTER/s ≥ Kamailio's single node",
                        f"{fnum(fb['offered'])} vs {fnum(kb['offered'])}: ratio {ratio:.2f}", ratio >= 1))
    f1b = best(f1, "register")
    if kb and f1b:
        ratio = f1b["offered"] / kb["offered"]
        targets.append(("1-node farm REGISTER/s ≥ Kamailio's single node",
                        f"{fnum(f1b['offered'])} vs {fnum(kb['offered'])}: ratio {ratio:.2f}", ratio >= 1))
    # The anchor: a 3-node farm against a 3-node Kamailio cluster sharing
    # its registrations by DMQ, on the same core.
    for scenario, what in (("register", "REGISTER"), ("call", "calls")):
        db, fmb = best(kd, scenario), best(fm, scenario)
        if db and fmb:
            ratio = fmb["offered"] / db["offered"]
            for need, required in ((1, "required"), (2, "reported")):
                targets.append((f"3-node farm {what} knee ≥ {need}× the 3-node Kamailio DMQ cluster's "
                                f"(ringmesh-load; {required})",
                                f"{fnum(fmb['offered'])} vs {fnum(db['offered'])}: ratio {ratio:.2f}",
                                ratio >= need))
    kc, sc = best(k, "call"), best(sn, "call")
    c2 = sn.get(("calls_2x_kam",))
    if kc and c2:
        ok = c2["fail_pct"] < CLEAN_FAIL_PCT and c2["p99"] <= CALL_P99_TARGET_US \
            and c2["goodput"] >= 0.95 * c2["offered"]
        targets.append((f"calls at 2× Kamailio's knee ({fnum(c2['offered'])}/s): < 0.1% failed, "
                        "p99 INVITE→200 ≤ 10 ms",
                        f"{fnum(c2['fail_pct'], 3)}% failed, p99 {us(c2['p99'])} µs, "
                        f"{fnum(c2['goodput'])}/s ok", ok))
    if kc and sc:
        targets.append(("calls knee vs Kamailio's (ringmesh-load)",
                        f"{fnum(sc['offered'])} vs {fnum(kc['offered'])}: ratio "
                        f"{sc['offered'] / kc['offered']:.2f}", sc["offered"] >= 2 * kc["offered"]))
    for scenario, what in (("register", "REGISTER"), ("call", "calls")):
        for n, d in (("single", sn), ("farm1", f1), ("farm", fm)):
            o, b = d.get(("overload", scenario)), best(d, scenario)
            if o and b:
                ratio = o["goodput"] / b["offered"]
                rest = o["started"] - o["ok"]
                targets.append((f"{res[n]['label']}: {what} goodput at 2× knee ≥ 90% of the knee, the rest 503",
                                f"{fnum(100 * ratio)}% ({fnum(o['goodput'])}/s of {fnum(b['offered'])}/s); "
                                f"{fnum(o['r503'])} of {fnum(rest)} not served were 503",
                                ratio >= 0.9 and (o["r503"] or 0) >= 0.9 * rest))
    for n, d in (("single", sn), ("farm1", f1), ("farm", fm)):
        m = d.get("memory")
        if m:
            targets.append((f"{res[n]['label']}: memory per binding per replica ≤ 300 B (PSS growth)",
                            f"{fnum(m['per_binding'])} B at {fnum(m['bindings'])} bindings"
                            + ("" if m["lingering_left"] == 0 else " (Timer J lingerers still counted)"),
                            m["per_binding"] <= 300))
    for n, d in (("single", sn), ("farm1", f1), ("farm", fm)):
        for scenario, what in (("register", "REGISTER"), ("call", "calls")):
            for tool in ("ringmesh-load", "sipp"):
                k = d.get(("knee", scenario, tool))
                if not k or not k["best"]:
                    continue
                below = [r for r in k["steps"] if r and r["offered"] <= 0.8 * k["best"]["offered"]]
                if not below:
                    continue
                shed = [r for r in below if r["shed"]]
                detail = ", ".join(f"{fnum(r['shed'])} at {fnum(r['offered'])}/s" for r in shed) or "none"
                targets.append((f"{res[n]['label']}: {what} ({tool}) nothing shed below 80% of the knee "
                                f"({fnum(0.8 * k['best']['offered'])}/s)",
                                f"{len(below)} steps; shed: {detail}", not shed))
    for n, base in (("single", "single_base"), ("farm", "farm_base")):
        if n not in res or base not in res:
            continue
        for scenario, what in (("register", "REGISTER"), ("call", "calls")):
            for tool in ("ringmesh-load", "sipp"):
                cur, old = best(res[n], scenario, tool), best(res[base], scenario, tool)
                if cur and old:
                    ratio = cur["offered"] / old["offered"]
                    targets.append((f"{res[n]['label']}: {what} knee ({tool}) vs the baseline binary, "
                                    "same run",
                                    f"{fnum(cur['offered'])} vs {fnum(old['offered'])}: ratio {ratio:.2f}",
                                    ratio >= 0.9))
    same, cross = fm.get(("latency", "same")), fm.get(("latency", "cross"))
    if same and cross:
        d99 = cross["p99"] - same["p99"]
        targets.append(("farm: a cross-supernode call adds ≤ 2 ms at p99 over a same-supernode one "
                        f"(half load, {fnum(same['offered'])}/s)",
                        f"p99 {us(cross['p99'])} vs {us(same['p99'])} µs: +{d99 / 1000:.2f} ms", d99 <= 2000))
    w("| target | measured | met |")
    w("|---|---|---|")
    for t, m, ok in targets:
        w(f"| {t} | {m} | {'yes' if ok else '**no**'} |")
    w("")
    w("Every step of every search (offered, ok/s, failed %, p99 µs, server CPU s per 1,000, UDP "
      "receive-buffer drops, requests shed by overload control):")
    w("")
    w("| server | scenario | tool | offered /s | ok /s | failed % | p99 µs | CPU s / 1,000 | drops | shed |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for n in every:
        for key, v in res[n].items():
            if not (isinstance(key, tuple) and key[0] == "knee"):
                continue
            for r in v["steps"]:
                if r is None:
                    continue
                w(f"| {res[n]['label']} | {r['scenario']} | {r['tool']} | {fnum(r['offered'])} | "
                  f"{fnum(r['goodput'])} | {fnum(r['fail_pct'], 2)} | {us(r['p99'])} | "
                  f"{fnum(r['cpu_per_1000'], 3)} | {fnum(r['drops'])} | "
                  f"{fnum(r['shed']) if r['shed'] is not None else '-'} |")
    w("")
    w(f"Raw results (every command line, failure reasons): `{a.work}/results.json`.")
    return "\n".join(L) + "\n"


def digest_table(w, res):
    """One supernode with digest authentication, this build and (with
    --baseline) the other, and their ratio: what authenticating every
    REGISTER costs, nonce tracking included."""
    cols = [n for n in ("digest", "digest_base") if n in res]
    f = res["digest"].get(("fixed", "register"))
    w(f"With digest authentication ({DigestNode.label}; {DigestNode.digest_users:,} subscribers, "
      "each registered once (401, then credentials) and then refreshed with the same nonce and a "
      "rising nc; ringmesh-load, SHA-256):")
    w("")
    w("| | " + " | ".join(res[n]["label"] for n in cols)
      + (" | this build / baseline |" if len(cols) == 2 else " |"))
    w("|---|" + "---|" * (len(cols) + (len(cols) == 2)))

    def line(what, cell, value=None):
        vals = [res[n].get(("fixed", "register")) for n in cols]
        cells = [cell(v) if v else "-" for v in vals]
        if len(cols) == 2:
            x = [value(v) if v and value else None for v in vals]
            cells.append(f"{x[0] / x[1]:.2f}" if x[0] and x[1] else "-")
        w(f"| {what} | " + " | ".join(cells) + " |")

    line(f"server CPU s per 1,000 REGISTERs at {fnum(f['offered']) if f else '?'}/s offered",
         lambda v: f"{fnum(v['cpu_per_1000'], 3)} ({fnum(v['fail_pct'], 2)}% failed, "
                   f"{fnum(v['r401'])} × 401)", lambda v: v["cpu_per_1000"])
    line("p50 / p99 µs at that rate (ratio: p99)", lambda v: f"{us(v['p50'])} / {us(v['p99'])}", lambda v: v["p99"])
    knees = [res[n].get(("knee", "register", "ringmesh-load")) for n in cols]
    bests = [k["best"] if k else None for k in knees]
    cells = []
    for k, b in zip(knees, bests):
        if not b:
            cells.append("none clean")
        else:
            cells.append(f"{'≥ ' if k['capped'] else ''}{fnum(b['offered'])} (p99 {us(b['p99'])} µs, "
                         f"{fnum(b['cpu_per_1000'], 3)} CPU s per 1,000)")
    if len(cols) == 2:
        cells.append(f"{bests[0]['offered'] / bests[1]['offered']:.2f}" if all(bests) else "-")
    w("| REGISTER knee /s | " + " | ".join(cells) + " |")
    w("")


def write_section(path, text, head="## Ringmesh vs Kamailio"):
    """Replaces (or appends) the section of `path` that starts with `head`."""
    try:
        with open(path) as f:
            doc = f.read()
    except OSError:
        doc = "# Benchmarks and measured figures\n"
    start = doc.find(head)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        nxt = doc.find("\n## ", start + len(head))
        doc = doc[:start] + text + ("" if nxt < 0 else "\n" + doc[nxt + 1:])
    with open(path, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    sys.exit(main())
