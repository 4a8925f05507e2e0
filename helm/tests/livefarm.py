"""A real farm on 127.0.0.1 for the live dashboard test.

`ringmesh dev` (3 supernodes), a real etcd with `ringmesh provisioning` and
`ringmesh enrollment` on it, Debian's Prometheus scraping everything every
second with the alert rules loaded, and bounded sipp load. At the end etcd
is stopped and the control plane is asked again, so the store-error panels
show a real etcd loss. Every process is started here and stopped here by
its PID; every wait has a deadline.
"""

import json
import os
import pathlib
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from conftest import REPO, RULES

SIPP = REPO / "loadtest" / "sipp"
DOMAIN = "ringmesh.test"
TOKEN = "live-test-bootstrap-token-0123456789"
ADMIN_TOKEN = "live-test-admin-token-0123456789"


class Failure(RuntimeError):
    pass


def log(msg):
    print(f"[live {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def port_free(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def free_base(nodes):
    """A base port P whose derived ports (ringmesh dev) are all free, below
    the kernel's ephemeral range (from 32768), where no outgoing socket can
    be handed one of them while a node restarts."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        p = rng.randrange(11000, 31800, 10)
        ports = [p + i + off for i in range(nodes) for off in (0, 100, 200, 300, 400, 500)] + \
            [p + 600 + i for i in range(4)]
        if all(port_free(x) for x in ports):
            return p
    raise Failure("no free base port for ringmesh dev")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def rfc3339(stamp):
    """Seconds since the epoch of a Prometheus API timestamp such as
    2026-12-07T02:51:10.123456789Z (nanoseconds cut to microseconds)."""
    from datetime import datetime
    date, _, frac = stamp.rstrip("Z").partition(".")
    t = datetime.fromisoformat(date + "+00:00").timestamp()
    return t + (float("0." + frac[:6]) if frac else 0.0)


def wait_http(url, deadline_s, what):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            status, _ = http_get(url, timeout=2)
            if status == 200:
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.2)
    raise Failure(f"{what} did not answer {url} within {deadline_s} s ({last})")


class Farm:
    """Starts everything in `start()`, stops everything in `stop()`."""

    def __init__(self, binary, work, nodes=3):
        self.bin = str(binary)
        self.work = pathlib.Path(work)
        self.nodes = nodes
        self.procs = []  # (name, Popen)
        self.targets = {"ringmesh-supernode": [], "ringmesh-provisioning": [], "ringmesh-enrollment": []}
        self.t_start = None
        self.t_load_end = None
        self.t_end = None
        self.stats = {}

    # --- processes ---------------------------------------------------------

    def spawn(self, name, cmd, **kw):
        out = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        self.procs.append((name, p))
        return p

    def stop_proc(self, name, p, grace=10):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def stop(self):
        for name, p in reversed(self.procs):
            try:
                self.stop_proc(name, p)
            except Exception as e:  # keep stopping the others
                log(f"stopping {name}: {e}")
        self.procs = []

    # --- the pieces ---------------------------------------------------------

    def start_dev(self):
        self.base = free_base(self.nodes)
        cmd = [self.bin, "dev", "--json", "--auth", "none", "--nodes", str(self.nodes),
               "--sip-port", str(self.base), "--data", str(self.work / "farm")]
        log("starting " + " ".join(cmd))
        err = open(self.work / "dev.stderr.log", "w")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        self.procs.append(("dev", p))
        self.dev_lines = []
        self.sip = []
        lines = queue.Queue()

        def reader():  # drains stdout for the farm's whole life
            for line in p.stdout:
                lines.put(line)

        threading.Thread(target=reader, daemon=True).start()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if p.poll() is not None:
                    raise Failure(f"ringmesh dev exited ({p.returncode}); see {self.work}/dev.stderr.log")
                continue
            if not line.strip():
                continue
            ev = json.loads(line)
            self.dev_lines.append(ev)
            if ev.get("event") == "node":
                self.targets["ringmesh-supernode"].append(ev["metrics"])
                self.sip.append(ev["sip"])
            elif "metrics" in ev:
                # A control-plane service run by ringmesh dev itself.
                self.targets.setdefault(f"ringmesh-{ev['event']}", []).append(ev["metrics"])
            if ev.get("event") == "ready":
                log(f"farm ready: {len(self.sip)} supernodes at {', '.join(self.sip)}")
                return
        raise Failure("ringmesh dev printed no ready event within 120 s")

    def start_etcd(self):
        self.etcd_client, peer = free_port(), free_port()
        d = self.work / "etcd"
        self.etcd = self.spawn("etcd", [
            "etcd", "--name", "t", "--data-dir", str(d),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"t=http://127.0.0.1:{peer}"])
        wait_http(f"http://127.0.0.1:{self.etcd_client}/health", 20, "etcd")

    def start_control_plane(self):
        etcd = f"http://127.0.0.1:{self.etcd_client}"
        self.prov_api, prov_metrics = free_port(), free_port()
        self.enr_api, enr_metrics = free_port(), free_port()
        self.spawn("provisioning", [self.bin, "provisioning", "--listen", f"127.0.0.1:{self.prov_api}",
                                    "--metrics", f"127.0.0.1:{prov_metrics}", "--etcd", etcd,
                                    "--etcd-timeout-ms", "300", "--domain", DOMAIN,
                                    "--plaintext", "true"])
        self.spawn("enrollment", [self.bin, "enrollment", "--listen", f"127.0.0.1:{self.enr_api}",
                                  "--metrics", f"127.0.0.1:{enr_metrics}", "--etcd", etcd,
                                  "--etcd-timeout-ms", "300", "--bootstrap-token", TOKEN,
                                  "--admin-token", ADMIN_TOKEN, "--plaintext", "true"])
        wait_http(f"http://127.0.0.1:{prov_metrics}/healthz", 20, "provisioning")
        wait_http(f"http://127.0.0.1:{enr_metrics}/healthz", 20, "enrollment")
        self.targets["ringmesh-provisioning"].append(f"127.0.0.1:{prov_metrics}")
        self.targets["ringmesh-enrollment"].append(f"127.0.0.1:{enr_metrics}")

    def start_prometheus(self):
        self.prom_port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "5s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]}
                               for job, t in self.targets.items() if t],
        }
        path = self.work / "prometheus.yml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        r = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failure("promtool check config: " + r.stdout + r.stderr)
        self.spawn("prometheus", ["prometheus", f"--config.file={path}",
                                  f"--storage.tsdb.path={self.work / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{self.prom_port}",
                                  "--storage.tsdb.retention.time=1h", "--log.level=warn"])
        self.prom = f"http://127.0.0.1:{self.prom_port}"
        wait_http(self.prom + "/-/ready", 30, "prometheus")
        # Every target scraped once.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            active = self.api("targets")["activeTargets"]
            if active and all(t["health"] == "up" for t in active):
                return
            time.sleep(0.5)
        raise Failure(f"targets not all up: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in active]}")

    # --- load -----------------------------------------------------------------

    def ctl(self, *args, stdin=None):
        return subprocess.run([self.bin, "ctl", "--provisioning", f"http://127.0.0.1:{self.prov_api}", *args],
                              input=stdin, capture_output=True, text=True, timeout=30)

    def drive_control_plane(self, phase):
        """Provisioning: add, get, list, set-password, bar, unbar, delete,
        a missing subscriber; enrollment: CA bundle, revocations, a real
        Enroll with an openssl CSR, a bad token, ListCertificates."""
        codes = {}
        for i in range(5):
            user = f"live{phase}{i}"
            r = self.ctl("subscriber", "add", user, "--public", f"sip:{user}@{DOMAIN}", "--password-stdin",
                         stdin="secret\n")
            codes.setdefault("add", []).append(r.returncode)
            codes.setdefault("get", []).append(self.ctl("subscriber", "get", user).returncode)
        codes["list"] = self.ctl("subscriber", "list").returncode
        codes["missing"] = self.ctl("subscriber", "get", "nobody-here").returncode
        user = f"live{phase}0"
        codes["set-password"] = self.ctl("subscriber", "set-password", user, "--password-stdin",
                                         stdin="other\n").returncode
        codes["bar"] = self.ctl("subscriber", "bar", user).returncode
        codes["unbar"] = self.ctl("subscriber", "unbar", user).returncode
        codes["delete"] = self.ctl("subscriber", "delete", f"live{phase}4").returncode
        codes["enrollment"] = self.enrollment_calls(f"live-{phase}")
        return codes

    def enrollment_calls(self, node_name):
        import grpc
        sys.path.insert(0, str(self.stubs))
        from ringmesh.enrollment.v1 import enrollment_pb2 as pb, enrollment_pb2_grpc as pbg
        key, csr = self.work / f"{node_name}.key", self.work / f"{node_name}.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={node_name}"],
                       check=True, capture_output=True, timeout=30)
        out = {}
        with grpc.insecure_channel(f"127.0.0.1:{self.enr_api}") as ch:
            stub = pbg.EnrollmentStub(ch)
            calls = [
                ("GetCaBundle", lambda: stub.GetCaBundle(pb.GetCaBundleRequest(), timeout=5)),
                ("GetRevocations", lambda: stub.GetRevocations(pb.GetRevocationsRequest(), timeout=5)),
                ("Enroll", lambda: stub.Enroll(pb.EnrollRequest(csr_pem=csr.read_text(), bootstrap_token=TOKEN,
                                                                node_name=node_name), timeout=5)),
                ("Enroll-bad-token", lambda: stub.Enroll(pb.EnrollRequest(
                    csr_pem=csr.read_text(), bootstrap_token="not-the-bootstrap-token", node_name=node_name),
                    timeout=5)),
                ("ListCertificates", lambda: stub.ListCertificates(
                    pb.ListCertificatesRequest(), timeout=5,
                    metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))),
            ]
            for name, call in calls:
                try:
                    call()
                    out[name] = "OK"
                except grpc.RpcError as e:
                    out[name] = e.code().name
        return out

    def make_stubs(self):
        self.stubs = self.work / "stubs"
        self.stubs.mkdir(exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}",
                            f"--python_out={self.stubs}", f"--grpc_python_out={self.stubs}",
                            str(REPO / "proto" / "ringmesh" / "enrollment" / "v1" / "enrollment.proto")],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failure("grpc_tools.protoc: " + r.stderr)

    def sipp(self, name, bound_s, args, server):
        cmd = ["timeout", str(bound_s + 10), "sipp", *args, "-i", "127.0.0.1", "-nostdin", "-timeout",
               f"{bound_s}s", "-timeout_error", "-trace_err", "-error_file", str(self.work / f"{name}.err"), server]
        with open(self.work / f"{name}.out", "w") as out:
            return subprocess.Popen(cmd, cwd=self.work, stdout=out, stderr=subprocess.STDOUT)

    def gen_users(self, n, prefix, path):
        with open(path, "w") as f:
            subprocess.run(["sh", str(SIPP / "gen_users.sh"), str(n), DOMAIN, "secret", prefix], stdout=f,
                           check=True, timeout=30)

    def drive_sip(self, registrations=2000, calls=200):
        """2,000 REGISTERs spread over the three nodes (UDP; 200 of them over
        TCP), then 100 callees registered at node 1 and 200 calls placed at
        node 0, so calls cross an overlay link."""
        s = self.sip
        per_node = registrations // len(s)
        procs = []
        for i, server in enumerate(s):
            csv = self.work / f"reg{i}.csv"
            tcp = i == len(s) - 1
            n = per_node if not tcp else registrations - per_node * (len(s) - 1)
            self.gen_users(n, f"reg{i}u", csv)
            args = ["-sf", str(SIPP / "reg_noauth.xml"), "-inf", str(csv), "-p", str(free_port()),
                    "-r", "250", "-m", str(n)]
            args += ["-t", "t1"] if tcp else ["-t", "u1"]
            procs.append(self.sipp(f"reg{i}", 40, args, server))
        rc = [p.wait(timeout=60) for p in procs]
        self.stats["register_sipp_exit"] = rc
        callees = self.work / "callees.csv"
        self.gen_users(100, "callee", callees)
        callee_port, caller_port = free_port(), free_port()
        reg = self.sipp("callee_reg", 20, ["-sf", str(SIPP / "reg_noauth.xml"), "-inf", str(callees),
                                           "-p", str(callee_port), "-t", "u1", "-r", "200", "-m", "100"], s[1])
        self.stats["callee_reg_exit"] = reg.wait(timeout=40)
        uas = self.sipp("uas", 60, ["-sf", str(SIPP / "uas_noauth.xml"), "-p", str(callee_port), "-t", "u1",
                                    "-m", str(calls)], s[1])
        time.sleep(0.3)
        uac = self.sipp("uac", 50, ["-sf", str(SIPP / "uac_call_noauth.xml"), "-inf", str(callees),
                                    "-p", str(caller_port), "-t", "u1", "-r", "20", "-m", str(calls)], s[0])
        self.stats["uac_exit"] = uac.wait(timeout=70)
        try:
            self.stats["uas_exit"] = uas.wait(timeout=20)
        except subprocess.TimeoutExpired:
            uas.kill()
            self.stats["uas_exit"] = "killed"
        # A malformed request: counted as a parse error, answered 400.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            host, port = s[2].rsplit(":", 1)
            u.sendto(b"INVITE sip:nobody SIP/2.0\r\nVia: garbage\r\n\r\n", (host, int(port)))
        log(f"sipp exits: {self.stats}")

    # --- the whole scenario ---------------------------------------------------

    def add_gateway(self):
        """A PSTN gateway with nothing behind it: every node probes it and
        marks it down, so the gateway panels have series."""
        admin = next(ev["admin"] for ev in self.dev_lines if ev.get("event") == "node")
        r = subprocess.run([self.bin, "ctl", "--admin", admin, "gateway", "add", "live-gw",
                            f"sip:127.0.0.1:{free_port()}", "--prefix", "+999"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Failure(f"ringmesh ctl gateway add: {r.stderr}")

    def start(self):
        self.work.mkdir(parents=True, exist_ok=True)
        self.make_stubs()
        self.start_dev()
        self.add_gateway()
        self.start_etcd()
        self.start_control_plane()
        self.start_prometheus()
        self.t_start = time.time()
        time.sleep(3)
        self.stats["control_plane_before"] = self.drive_control_plane("a")
        self.drive_sip()
        self.stats["control_plane_again"] = self.drive_control_plane("b")
        self.t_load_end = time.time()
        # etcd loss: the control plane answers UNAVAILABLE, the farm serves on.
        log("stopping etcd (etcd loss)")
        self.stop_proc("etcd", self.etcd)
        time.sleep(1)
        # Several rounds, seconds apart: a counter series born at its first
        # error needs a second sample before rate() sees it move.
        for phase in "cde":
            self.stats["control_plane_without_etcd"] = self.drive_control_plane(phase)
            time.sleep(2)
        log(f"control plane: {self.stats['control_plane_before']} / without etcd: "
            f"{self.stats['control_plane_without_etcd']}")
        # A few more scrapes (1 s apart), then every rule group evaluated
        # on data from after the load: the SLO group runs every 30 s at an
        # offset of Prometheus's choosing, so a fixed sleep can miss it.
        time.sleep(3)
        self.wait_rules_evaluated_after(self.t_load_end, 45)
        self.t_end = time.time()

    def wait_rules_evaluated_after(self, t, timeout):
        end = time.monotonic() + timeout
        while True:
            groups = self.api("rules")["groups"]
            late = [g["name"] for g in groups if rfc3339(g["lastEvaluation"]) <= t]
            if groups and not late:
                return
            if time.monotonic() > end:
                raise Failure(f"rule groups not evaluated since the load ended, after {timeout} s: {late}")
            time.sleep(1)

    # --- Prometheus API -------------------------------------------------------

    def api(self, path, **params):
        url = f"{self.prom}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=30)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise Failure(f"{path}: {doc}")
        return doc["data"]

    def query(self, expr, at=None):
        return self.api("query", query=expr, time=f"{at or self.t_end:.3f}")

    def query_range(self, expr, start, end, step):
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
