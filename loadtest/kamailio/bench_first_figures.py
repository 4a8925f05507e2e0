#!/usr/bin/env python3
"""First Kamailio figures with the Ringmesh sipp scenarios (the benchmark reference).

    bench_first_figures.py [--reg-rates 5000,10000,20000,30000]
                           [--call-rates 1000,2000,3000,4000]
                           [--seconds 10] [--port 15080] [--out FILE.md]
                           [--server-cpu 1] [--load-cpu 0] [--callees 10000]

For every offered rate it starts a fresh Kamailio (run-kamailio.sh, no auth,
pinned with taskset to --server-cpu), offers load with sipp pinned to
--load-cpu for --seconds, and records: achieved rate, failed calls, Kamailio
CPU (utime+stime of all its processes from /proc, before/after), sipp CPU,
the kernel's UDP receive-buffer drops, and (REGISTER) shared memory per
binding. Prints a markdown table and appends it, with the exact commands, to
--out. Every run is bounded (sipp -m/-timeout/-timeout_error inside
`timeout`); every process started here is stopped by its PID.
Python standard library only.
"""
import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIPP_DIR = os.path.join(os.path.dirname(HERE), "sipp")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "ringmesh.test"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def proc_cpu_ticks(main_pid):
    """utime+stime (ticks) of main_pid and all its direct children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ppid = int(fields[1])
        if int(entry) == main_pid or ppid == main_pid:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def core_jiffies():
    """{cpu index: (user+nice+system, total)} jiffies from /proc/stat
    (irq/softirq time, mostly loopback packet processing, is left out)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[int(m.group(1))] = (v[0] + v[1] + v[2], sum(v[:8]))
    return out


def core_busy_pct(before, after, cpu):
    b = after[cpu][0] - before[cpu][0]
    t = after[cpu][1] - before[cpu][1]
    return 100.0 * b / t if t else 0.0


def wait_quiet(cpus, limit_pct, max_wait):
    """Wait until every core in cpus was busy < limit_pct over one second
    (other people's work on a shared box); return the last busy figures."""
    deadline = time.time() + max_wait
    while True:
        a = core_jiffies()
        time.sleep(1)
        b = core_jiffies()
        busy = {c: core_busy_pct(a, b, c) for c in cpus}
        if max(busy.values()) < limit_pct or time.time() > deadline:
            return busy
        print(f"  waiting for a quiet box: {busy}", file=sys.stderr, flush=True)


def udp_rcvbuf_errors():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    hdr, val = lines[0], lines[1]
    return int(val[hdr.index("RcvbufErrors")])


def kamcmd(run_dir, *args):
    return sh(["kamcmd", "-s", f"unix:{run_dir}/ctl.sock", *args])


def shm_used(run_dir, what="real_used_size"):
    out = kamcmd(run_dir, "stats.get_statistics", "shmem:")
    return int(re.search(rf"shmem:{what} = (\d+)", out).group(1))


def other_load(j0, j1, a, kcpu, sipp_cpu):
    """% of the server core used by processes other than Kamailio during the run."""
    busy = (j1[a.server_cpu][0] - j0[a.server_cpu][0]) / CLK_TCK
    total = (j1[a.server_cpu][1] - j0[a.server_cpu][1]) / CLK_TCK
    return 100.0 * max(busy - kcpu, 0.0) / total if total else 0.0


def registered(run_dir):
    out = kamcmd(run_dir, "stats.get_statistics", "usrloc:")
    return int(re.search(r"location_contacts = (\d+)", out).group(1))


# nice only orders processes inside one scheduler autogroup (one session);
# with kernel.sched_autogroup_enabled=1 other sessions still get an equal share
# of the core whatever this says: see --autogroup-nice.
NICE = ["nice", "-n", "-20"]


class Kamailio:
    def __init__(self, port, cpu, run_dir):
        self.port, self.cpu, self.run_dir = port, cpu, run_dir
        self.cmd = [*NICE, os.path.join(HERE, "run-kamailio.sh"), "--daemon", "--cpu", str(cpu),
                    "--run-dir", run_dir, str(port)]

    def __enter__(self):
        self.pid = int(sh(self.cmd).strip().splitlines()[-1])
        return self

    def __exit__(self, *exc):
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def parse_sipp(out):
    def cum(label):
        m = re.findall(rf"{label}\s*\|\s*\S+\s*\|\s*(\d+)", out)
        return int(m[-1]) if m else 0
    # sipp's final "Elapsed Time (cumulative)" only covers the last period:
    # use the epoch seconds of Start Time and Current Time instead
    start = re.findall(r"Start Time\s*\|.*?(\d+\.\d+)\s*$", out, re.M)
    now = re.findall(r"Current Time\s*\|.*?(\d+\.\d+)\s*$", out, re.M)
    elapsed = float(now[-1]) - float(start[-1]) if start and now else 0.0
    return {"ok": cum("Successful call"), "failed": cum("Failed call"),
            "created": cum("Total Calls created"), "elapsed": elapsed}


def run_sipp(args, bound, cpu, log):
    """Run sipp pinned to cpu; return (parsed stats, rc, sipp cpu seconds, argv)."""
    argv = ["timeout", str(bound + 10), *NICE, "taskset", "-c", str(cpu), "sipp", *args,
            "-nostdin", "-timeout", f"{bound}s", "-timeout_error",
            "-trace_err", "-error_file", log + ".err"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log) as f:
        stats = parse_sipp(f.read())
    return stats, rc, cpu_s, argv


SIPP_FAST = ["-max_recv_loops", "100000", "-max_sched_loops", "100000",
             "-buff_size", "4194304"]


def bench_register(rate, seconds, a, work):
    n = rate * seconds
    csv = os.path.join(work, f"reg_{rate}.csv")
    with open(csv, "w") as f:
        subprocess.run([os.path.join(SIPP_DIR, "gen_users.sh"), str(n), DOMAIN], stdout=f, check=True)
    run_dir = os.path.join(work, f"kam_reg_{rate}")
    with Kamailio(a.port, a.server_cpu, run_dir) as k:
        quiet = wait_quiet([a.server_cpu, a.load_cpu], a.quiet_pct, a.quiet_wait)
        shm0, used0, drops0 = shm_used(run_dir), shm_used(run_dir, "used_size"), udp_rcvbuf_errors()
        c0, t0, j0 = proc_cpu_ticks(k.pid), time.time(), core_jiffies()
        args = ["-sf", os.path.join(SIPP_DIR, "reg_noauth.xml"), "-inf", csv,
                "-i", "127.0.0.1", "-p", str(a.port + 1), "-t", "u1",
                "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", "15000",
                *SIPP_FAST, f"127.0.0.1:{a.port}"]
        st, rc, sipp_cpu, argv = run_sipp(args, seconds + 30, a.load_cpu,
                                          os.path.join(work, f"reg_{rate}.log"))
        wall, j1 = time.time() - t0, core_jiffies()
        kcpu = (proc_cpu_ticks(k.pid) - c0) / CLK_TCK
        drops = udp_rcvbuf_errors() - drops0
        contacts = registered(run_dir)
        shm_per = (shm_used(run_dir) - shm0) / contacts if contacts else 0
        used_per = (shm_used(run_dir, "used_size") - used0) / contacts if contacts else 0
    return {"kind": "REGISTER", "rate": rate, "n": n, **st, "rc": rc, "kcpu": kcpu,
            "wall": wall, "sipp_cpu": sipp_cpu, "drops": drops, "contacts": contacts,
            "shm_per": shm_per, "used_per": used_per, "quiet": quiet,
            "other": other_load(j0, j1, a, kcpu, sipp_cpu), "cmd": [" ".join(map(shlex.quote, k.cmd)),
                                        " ".join(map(shlex.quote, argv))]}


def bench_calls(rate, seconds, a, work):
    n = rate * seconds
    csv = os.path.join(work, "callees.csv")
    with open(csv, "w") as f:
        subprocess.run([os.path.join(SIPP_DIR, "gen_users.sh"), str(a.callees), DOMAIN],
                       stdout=f, check=True)
    run_dir = os.path.join(work, f"kam_call_{rate}")
    uas_port, uac_port = a.port + 2, a.port + 3
    with Kamailio(a.port, a.server_cpu, run_dir) as k:
        # the callees' contacts point at the UAS port (registered from it)
        reg_args = ["-sf", os.path.join(SIPP_DIR, "reg_noauth.xml"), "-inf", csv,
                    "-i", "127.0.0.1", "-p", str(uas_port), "-r", "5000", "-m", str(a.callees),
                    *SIPP_FAST, f"127.0.0.1:{a.port}"]
        st, rc, _, reg_argv = run_sipp(reg_args, 30, a.load_cpu, os.path.join(work, f"callees_{rate}.log"))
        if rc != 0 or registered(run_dir) != a.callees:
            raise SystemExit(f"callee registration failed: {st} rc={rc}")
        uas_argv = ["timeout", str(seconds + 40), *NICE, "taskset", "-c", str(a.load_cpu), "sipp",
                    "-sf", os.path.join(SIPP_DIR, "uas_noauth.xml"), "-i", "127.0.0.1",
                    "-p", str(uas_port), "-t", "u1", "-m", str(n), *SIPP_FAST,
                    "-nostdin", "-timeout", f"{seconds + 30}s", f"127.0.0.1:{a.port}"]
        # wait for a quiet box first: the UAS's -timeout runs from its start
        quiet = wait_quiet([a.server_cpu, a.load_cpu], a.quiet_pct, a.quiet_wait)
        uas_log = open(os.path.join(work, f"uas_{rate}.log"), "w")
        uas = subprocess.Popen(uas_argv, stdout=uas_log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        drops0 = udp_rcvbuf_errors()
        c0, t0, j0 = proc_cpu_ticks(k.pid), time.time(), core_jiffies()
        args = ["-sf", os.path.join(SIPP_DIR, "uac_call_noauth.xml"), "-inf", csv,
                "-i", "127.0.0.1", "-p", str(uac_port), "-t", "u1",
                "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", "15000",
                *SIPP_FAST, f"127.0.0.1:{a.port}"]
        st, rc, sipp_cpu, argv = run_sipp(args, seconds + 30, a.load_cpu,
                                          os.path.join(work, f"uac_{rate}.log"))
        wall, j1 = time.time() - t0, core_jiffies()
        kcpu = (proc_cpu_ticks(k.pid) - c0) / CLK_TCK
        drops = udp_rcvbuf_errors() - drops0
        try:
            uas.wait(timeout=5)
        except subprocess.TimeoutExpired:
            uas.terminate()
            uas.wait(timeout=5)
        uas_log.close()
    return {"kind": "call", "rate": rate, "n": n, **st, "rc": rc, "kcpu": kcpu, "wall": wall,
            "sipp_cpu": sipp_cpu, "drops": drops, "contacts": a.callees, "shm_per": 0,
            "used_per": 0, "quiet": quiet, "other": other_load(j0, j1, a, kcpu, None),
            "cmd": [" ".join(map(shlex.quote, k.cmd)), " ".join(map(shlex.quote, reg_argv)),
                    " ".join(map(shlex.quote, uas_argv)), " ".join(map(shlex.quote, argv))]}


def row(r):
    achieved = r["ok"] / r["elapsed"] if r["elapsed"] else 0
    fail_pct = 100.0 * (r["n"] - r["ok"]) / r["n"]
    util = 100.0 * r["kcpu"] / r["elapsed"] if r["elapsed"] else 0
    us_per = 1e6 * r["kcpu"] / r["ok"] if r["ok"] else 0
    shm = f"{r['used_per']:.0f} / {r['shm_per']:.0f}" if r["shm_per"] else "-"
    return (f"| {r['kind']} | {r['rate']:,} | {r['n']:,} | {r['ok']:,} | {r['n'] - r['ok']:,} "
            f"({fail_pct:.2f}%) | {r['elapsed']:.1f} | {achieved:,.0f} | {r['kcpu']:.2f} | "
            f"{util:.0f}% | {us_per:.1f} | {r['sipp_cpu']:.1f} | {r['drops']:,} | {shm} | "
            f"{r['other']:.0f}% |")


HEADER = ("| scenario | offered /s | attempts | ok | not ok (%) | sipp elapsed s | achieved /s | "
          "Kamailio CPU s | Kamailio core use | Kamailio CPU µs per ok | sipp CPU s | "
          "UDP rcvbuf drops | shm B per binding (used / real_used) | other load on server core |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reg-rates", default="5000,10000,20000,30000")
    p.add_argument("--call-rates", default="1000,2000,3000,4000")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--port", type=int, default=15080)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--callees", type=int, default=10000)
    p.add_argument("--work", default="/tmp/ringmesh-kamailio-bench")
    p.add_argument("--out", default=None)
    p.add_argument("--quiet-pct", type=float, default=15.0,
                   help="before each run wait until both cores are busy less than this (shared box)")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="but at most this many seconds")
    p.add_argument("--autogroup-nice", type=int, default=None,
                   help="write this nice value (-20..19) to /proc/self/autogroup: gives this "
                        "session's scheduler autogroup (Kamailio and sipp included) priority "
                        "over other sessions on a shared box")
    a = p.parse_args()
    if not (1 <= a.seconds <= 60):
        raise SystemExit("--seconds must be 1..60")
    os.makedirs(a.work, exist_ok=True)
    if a.autogroup_nice is not None:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(a.autogroup_nice))
        with open("/proc/self/autogroup") as f:
            print(f"autogroup: {f.read().strip()}", file=sys.stderr)
    results = []
    for rate in [int(x) for x in a.reg_rates.split(",") if x]:
        r = bench_register(rate, a.seconds, a, a.work)
        results.append(r)
        print(row(r), flush=True)
    for rate in [int(x) for x in a.call_rates.split(",") if x]:
        r = bench_calls(rate, a.seconds, a, a.work)
        results.append(r)
        print(row(r), flush=True)
    table = "\n".join([HEADER] + [row(r) for r in results])
    print(table)
    if a.out:
        with open(a.out, "a") as f:
            f.write(f"\n### Run {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{table}\n\nCommands:\n\n")
            for r in results:
                f.write(f"- {r['kind']} {r['rate']}/s:\n")
                for c in r["cmd"]:
                    f.write(f"  - `{c}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
