#!/usr/bin/env python3
"""SIP over TLS, Ringmesh vs Kamailio's tls module: part of `make bench`.

    loadtest/bench/tls.py [--quick] [--out docs/benchmarks.md] [--work DIR]
                          [--port-base 18100] [--server-cpu 1] [--load-cpu 0]

In one run on one machine, each server pinned to --server-cpu and every
load generator to --load-cpu, both configured the same way (one ECDSA
P-256 certificate from a throwaway CA, TLS 1.2 and 1.3 offered, no client
certificates, no authentication):
  (a) one Ringmesh supernode  `ringmesh supernode --sip tls:... --tls-cert DIR`
  (b) Kamailio                `run-kamailio.sh --tls PORT CERT KEY` (tls module)

two measures:
  1. REGISTER/s over persistent TLS flows: ringmesh-load --transport tls
     (4 connections, the certificate verified against the CA), distinct
     users, offered rate stepped up (x1.5) until a step fails (>= 0.1%
     failed or p99 over 100 ms); the knee is the last clean step. Server
     CPU seconds per 1,000 REGISTERs at each step.
  2. New TLS handshakes/s: `openssl s_time -new` (full handshakes, each on a
     new connection, closed without a request) on --load-cpu for
     --handshake-seconds, before the REGISTER steps; handshakes completed
     per second and server CPU milliseconds per handshake (the latter does
     not depend on whether the client or the server was the bottleneck).
     One client: with three at once Kamailio 5.6.3's TLS worker crashed
     (SIGSEGV) here.

It writes the section "## SIP over TLS: Ringmesh vs Kamailio" of --out.
Everything runs at normal scheduling priority. Every process started here
is stopped by its PID; everything listens on 127.0.0.1.
"""
import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (process bookkeeping, ringmesh-load runs)

HEAD = "## SIP over TLS: Ringmesh vs Kamailio"


def make_certs(work):
    """A throwaway CA and a server certificate for 127.0.0.1 (ECDSA P-256):
    (ca.crt, directory with tls.crt and tls.key)."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    ca_key, ca, key, csr, crt = (os.path.join(d, f) for f in
                                 ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    ext = os.path.join(d, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:ringmesh.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True, timeout=30)  # noqa: E731
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=ringmesh bench CA")
    run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=ringmesh.test")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    return ca, d


class TlsSupernode(bench.Server):
    label, kind = "Ringmesh, 1 supernode", "ringmesh"

    def __init__(self, a, port, cert_dir):
        self.sip = f"127.0.0.1:{port + 1}"
        self.metrics = f"127.0.0.1:{port + 2}"
        data = os.path.join(a.work, f"tls_sn_{port}")
        subprocess.run(["rm", "-rf", data], check=True)
        binary = os.path.join(bench.BIN, "ringmesh")
        self.argv = ["taskset", "-c", str(a.server_cpu), binary, "supernode", "--auth", "none",
                     "--sip", f"udp:127.0.0.1:{port}", "--sip", f"tls:{self.sip}",
                     "--tls-cert", cert_dir, "--metrics", self.metrics, "--data", data,
                     "--log", "warn", *bench.flags_for_load(binary, "supernode")]
        self.logf = open(data + ".log", "w")
        p = subprocess.Popen(self.argv, stdout=self.logf, stderr=subprocess.STDOUT)
        self.pid = p.pid
        bench.STARTED.append((self.pid, "supernode"))
        bench.wait_options(f"127.0.0.1:{port}", 10)

    def metrics_addrs(self):
        return [self.metrics]

    def close(self):
        bench.stop(self.pid)


class TlsKamailio(bench.Server):
    label, kind = "Kamailio 5.6, tls module (children=2)", "kamailio"

    def __init__(self, a, port, cert_dir):
        self.sip = f"127.0.0.1:{port + 1}"
        run_dir = os.path.join(a.work, f"tls_kam_{port}")
        subprocess.run(["rm", "-rf", run_dir], check=True)
        self.argv = [os.path.join(bench.KAM_DIR, "run-kamailio.sh"), "--daemon", "--cpu",
                     str(a.server_cpu), "--run-dir", run_dir, "--tls", str(port + 1),
                     os.path.join(cert_dir, "tls.crt"), os.path.join(cert_dir, "tls.key"), str(port)]
        out = subprocess.run(self.argv, check=True, capture_output=True, text=True).stdout
        self.pid = int(out.strip().splitlines()[-1])
        bench.STARTED.append((self.pid, "kamailio"))

    def metrics_addrs(self):
        return []

    def close(self):
        bench.stop(self.pid)


def registers(a, server, ca, users, tag):
    """Steps REGISTER/s over TLS up until a step is not clean (or the
    steps run out: the knee is then at least the last step)."""
    steps, best = [], None
    rate = a.start_rate
    for _ in range(a.steps):
        bench.log(f"  {server.label} / TLS REGISTER: {rate}/s")
        r = bench.run_rml(a, server, "register", rate, a.step_seconds, users, f"{tag}_tls_{rate}",
                          extra=["--transport", "tls", "--tls-ca", ca])
        steps.append(r)
        time.sleep(a.settle)
        if r is None or not bench.clean(r):
            break
        best = r
        rate = int(rate * 1.5)
    return {"best": best, "steps": steps, "capped": bool(steps) and steps[-1] is best}


def handshakes(a, server, ca, seconds):
    """`openssl s_time -new`; returns the handshakes per second and the
    server's CPU per handshake."""
    argv = ["timeout", str(seconds + 30), "taskset", "-c", str(a.load_cpu), "openssl", "s_time",
            "-connect", server.sip, "-new", "-time", str(seconds), "-CAfile", ca]
    pids, c0 = bench.server_cpu(server)
    t0 = time.time()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(a.handshake_clients)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.time() - t0
    cpu = (bench.cpu_ticks(pids) - c0) / bench.CLK_TCK
    total = 0
    for o in outs:
        m = re.search(r"(\d+) connections in \d+ real seconds", o)
        if not m:
            bench.log(f"s_time printed no count:\n{o[-800:]}")
            return None
        total += int(m.group(1))
    return {"handshakes": total, "rate": total / wall, "cpu": cpu, "wall": wall,
            "cpu_ms_per": 1000 * cpu / max(total, 1),
            "cmd": bench.q(argv) + (f"  (x{a.handshake_clients} at once)" if a.handshake_clients > 1 else "")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter steps (a smoke run)")
    p.add_argument("--out", default=os.path.join(bench.ROOT, "docs", "benchmarks.md"))
    p.add_argument("--work", default="/tmp/ringmesh-bench-tls")
    p.add_argument("--port-base", type=int, default=18100)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--handshake-seconds", type=int, default=10)
    p.add_argument("--handshake-clients", type=int, default=1)
    a = p.parse_args()
    a.step_seconds = 5 if a.quick else 10
    a.settle = 1 if a.quick else 3
    a.steps = 4 if a.quick else 10
    a.start_rate = 2000
    a.callees = 0
    if a.quick:
        a.handshake_seconds = min(a.handshake_seconds, 5)
    # A fresh work directory: no report of an earlier run is read again.
    subprocess.run(["rm", "-rf", a.work], check=True)
    os.makedirs(a.work)
    ca, cert_dir = make_certs(a.work)
    info = bench.machine()
    t0 = time.time()
    res = {}
    users = bench.Users()
    for name, cls, port in (("kamailio", TlsKamailio, a.port_base),
                            ("ringmesh", TlsSupernode, a.port_base + 100)):
        bench.log(f"== {name}")
        server = cls(a, port, cert_dir)
        try:
            # Handshakes first, on the fresh server: the last REGISTER step
            # overloads it on purpose.
            hs = handshakes(a, server, ca, a.handshake_seconds)
            time.sleep(a.settle)
            reg = registers(a, server, ca, users, name)
            res[name] = {"label": server.label, "register": reg, "handshake": hs}
        finally:
            server.close()
    took = time.time() - t0
    text = report(a, info, res, took)
    print(text)
    bench.write_section(a.out, text, HEAD)
    return 0


def ratio(x, y):
    return f"{x / y:.2f}x" if x and y else "n/a"


def report(a, info, res, took):
    kam, rm = res.get("kamailio", {}), res.get("ringmesh", {})
    w = [HEAD, ""]
    w.append(f"`make bench` (this part: `python3 loadtest/bench/tls.py{' --quick' if a.quick else ''}`), "
             f"{time.strftime('%Y-%m-%d')}, on {info['model']} ({info['cores']} CPUs, kernel "
             f"{info['kernel']}; {info['versions']}), {took / 60:.0f} minutes. Each server pinned to "
             f"CPU {a.server_cpu}, the load to CPU {a.load_cpu}, at normal priority; one ECDSA P-256 "
             "certificate from a throwaway CA for both, TLS 1.2 and 1.3 offered (both negotiated 1.3), "
             "no client certificates, no authentication.")
    w.append("")
    w.append("| measure | Kamailio tls | Ringmesh | Ringmesh / Kamailio |")
    w.append("|---|---|---|---|")
    kb = (kam.get("register") or {}).get("best") or {}
    rb = (rm.get("register") or {}).get("best") or {}
    at_least = lambda d: "≥ " if (d.get("register") or {}).get("capped") else ""  # noqa: E731
    w.append(f"| REGISTER/s over 4 persistent TLS flows (knee: last step < 0.1% failed, p99 < 100 ms) | "
             f"{at_least(kam)}{bench.fnum(kb.get('offered'))} | {at_least(rm)}{bench.fnum(rb.get('offered'))} | "
             f"{at_least(rm)}{ratio(rb.get('offered'), kb.get('offered'))} |")
    # The same offered rate for both: the highest step both passed.
    both = {}
    for name, d in (("k", kam), ("r", rm)):
        for st in (d.get("register") or {}).get("steps", []):
            if st and bench.clean(st):
                both.setdefault(st["offered"], {})[name] = st
    same = max((r for r, v in both.items() if len(v) == 2), default=None)
    if same:
        ks, rs = both[same]["k"], both[same]["r"]
        w.append(f"| server CPU s per 1,000 REGISTERs at {bench.fnum(same)}/s (both clean) | "
                 f"{ks['cpu_per_1000']:.3f} | {rs['cpu_per_1000']:.3f} | "
                 f"{ratio(rs['cpu_per_1000'], ks['cpu_per_1000'])} |")
        w.append(f"| REGISTER p99 at {bench.fnum(same)}/s (µs) | {bench.fnum(ks['p99'])} | "
                 f"{bench.fnum(rs['p99'])} | {ratio(rs['p99'], ks['p99'])} |")
    kh, rh = kam.get("handshake") or {}, rm.get("handshake") or {}
    w.append(f"| new TLS handshakes/s (`openssl s_time -new`, {a.handshake_clients} client(s)) | "
             f"{bench.fnum(kh.get('rate'))} | "
             f"{bench.fnum(rh.get('rate'))} | {ratio(rh.get('rate'), kh.get('rate'))} |")
    w.append(f"| server CPU ms per handshake | {bench.fnum(kh.get('cpu_ms_per'), 3)} | "
             f"{bench.fnum(rh.get('cpu_ms_per'), 3)} | {ratio(rh.get('cpu_ms_per'), kh.get('cpu_ms_per'))} |")
    w.append("")
    w.append("Steps (offered REGISTER/s: failed %, p99 µs, server CPU s per 1,000):")
    w.append("")
    for name, d in (("Kamailio", kam), ("Ringmesh", rm)):
        steps = [s for s in (d.get("register") or {}).get("steps", []) if s]
        w.append(f"- {name}: " + "; ".join(
            f"{s['offered']}: {s['fail_pct']:.2f}%, {bench.fnum(s['p99'])}, {s['cpu_per_1000']:.3f}"
            for s in steps))
    w.append("")
    w.append("Commands (the last step of each, and the handshake clients):")
    w.append("")
    w.append("```")
    for name, d in (("kamailio", kam), ("ringmesh", rm)):
        steps = [s for s in (d.get("register") or {}).get("steps", []) if s]
        if steps:
            w.append(steps[-1]["cmd"])
        if d.get("handshake"):
            w.append(d["handshake"]["cmd"])
    w.append("```")
    w.append("")
    w.append("The handshake client has one core: when it is the bottleneck both servers see about the "
             "same rate, and the server CPU per handshake is the figure to compare. \"≥\" marks a knee the "
             "steps did not reach: the server was still clean at the last step. With three handshake "
             "clients at once, Kamailio 5.6.3's TLS worker crashed (SIGSEGV, core/tcp_main) on this "
             "machine; one client is what both are measured with.")
    return "\n".join(w) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        bench.stop_all()
