"""The Helm chart: rendered with the Helm SDK (helm-python-sdk), linted
strictly, validated against the Kubernetes 1.30 API (kubernetes-validate
--strict), scanned by checkov, linted by yamllint, and checked object by
object: the supernode StatefulSet and its flags, the services, the control
plane, network policies, monitoring. values.schema.json must reject bad
values naming the field.
"""

import base64
import hashlib
import json
import re
import subprocess
import time

import helm_python
import pytest
import yaml

from conftest import CHART, RULES, TESTS, load_yaml_docs, run, tool

NAMESPACE = "ringmesh"
RELEASE = "farm"
KUBE = "1.30.0"

# checkov checks skipped for the whole chart, with the reason (none today:
# every skip is an annotation on the object it concerns, with its reason).
CHECKOV_SKIPS = {}


def inline_values(tmp_path_factory):
    """A value set with the bootstrap token and a CA given inline (a fresh
    throwaway CA from openssl, never committed) and an external etcd."""
    d = tmp_path_factory.mktemp("ca")
    key, crt = d / "ca.key", d / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=ringmesh test CA"],
        check=True, capture_output=True, timeout=30)
    return {
        "domain": "ims.example.net",
        "bootstrapToken": {"value": "a-bootstrap-token-of-forty-characters-xx"},
        "ca": {"cert": crt.read_text(), "key": key.read_text()},
        "etcd": {"enabled": False, "endpoints": ["http://etcd-a.db:2379", "http://etcd-b.db:2379"]},
        "serviceAccount": {"create": False, "name": "ringmesh-sa"},
        "supernode": {"antiAffinity": "soft", "zoneSpread": False,
                      "config": {"replicas": 2, "auth": "none", "advertise": "sip.ims.example.net"}},
    }


VALUE_SETS = {
    "default": lambda f: {},
    "full": lambda f: yaml.safe_load((TESTS / "values-full.yaml").read_text()),
    "inline": inline_values,
}


@pytest.fixture(scope="module")
def chart():
    c = helm_python.Chart.load(str(CHART))
    yield c
    c.close()


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, chart, tmp_path_factory):
    """(name, values, {template: text}, [objects], path of the manifests)."""
    name = request.param
    values = VALUE_SETS[name](tmp_path_factory)
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests = {k: v for k, v in out.items() if k.endswith(".yaml") and v.strip()}
    text = "".join(f"---\n# Source: {k}\n{v.strip()}\n" for k, v in sorted(manifests.items()))
    path = tmp_path_factory.mktemp("render") / f"{name}.yaml"
    path.write_text(text)
    return name, values, out, load_yaml_docs(text), path


def objects(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, component):
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
    return found[0]


# --- tools -----------------------------------------------------------------

@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_helm_lint_strict(values_name, tmp_path_factory):
    values = VALUE_SETS[values_name](tmp_path_factory)
    result = helm_python.lint(str(CHART), values, strict=True, kube_version="v" + KUBE)
    assert not result.get("errors"), result
    serious = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2]
    assert not serious, serious


def test_kubernetes_validate_strict(rendered):
    name, _, _, docs, path = rendered
    r = run([tool("kubernetes-validate"), "-k", KUBE, "--strict", str(path)], timeout=300)
    lines = (r.stdout + r.stderr).splitlines()
    # prometheus-operator and cert-manager CRDs have no schema in
    # kubernetes-validate; their content is checked below (promtool on the
    # PrometheusRule, structure of the ServiceMonitor and Certificate).
    crd = re.compile(r"WARN .*Couldn't find schema for kind ((ServiceMonitor|PrometheusRule) "
                     r"with api version monitoring\.coreos\.com/v1|Certificate with api version "
                     r"cert-manager\.io/v1)")
    bad = [l for l in lines if not l.startswith("INFO") and not crd.search(l) and l.strip()]
    assert r.returncode == 0 and not bad, f"{name}: kubernetes-validate:\n" + "\n".join(bad or lines[-20:])
    validated = sum(1 for l in lines if l.startswith("INFO") and "passed" in l)
    crds = sum(1 for d in docs if d["apiVersion"].startswith(("monitoring.coreos.com/", "cert-manager.io/")))
    assert validated == len(docs) - crds


def test_checkov(rendered):
    name, _, _, _, path = rendered
    cmd = [tool("checkov"), "-f", str(path), "--framework", "kubernetes", "--skip-download",
           "--compact", "--output", "json"]
    if CHECKOV_SKIPS:
        cmd += ["--skip-check", ",".join(CHECKOV_SKIPS)]
    r = run(cmd, timeout=600)
    import json
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c.get("check_name")) for rep in reports
              for c in rep.get("results", {}).get("failed_checks", [])]
    assert not failed, f"{name}: checkov failed checks: {failed}"
    skipped = [c for rep in reports for c in rep.get("results", {}).get("skipped_checks", [])]
    for c in skipped:
        # Every skip carries a written reason.
        assert (c.get("check_result", {}).get("suppress_comment") or "").strip() or c["check_id"] in CHECKOV_SKIPS, c
    passed = sum(len(rep.get("results", {}).get("passed_checks", [])) for rep in reports)
    assert passed > 100, f"{name}: checkov ran only {passed} checks"


YAMLLINT_VALUES = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
"""
# Rendered manifests and the rules file carry one-line PromQL expressions and
# dashboard JSON: their line length is not a style matter.
YAMLLINT_RENDERED = """
extends: default
rules:
  line-length: disable
  document-start: disable
"""


def test_yamllint_values_and_rules():
    files = [CHART / "values.yaml", TESTS / "values-full.yaml", CHART / "Chart.yaml"]
    r = run([tool("yamllint"), "-s", "-f", "parsable", "-d", YAMLLINT_VALUES] + [str(f) for f in files])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([tool("yamllint"), "-s", "-f", "parsable", "-d", YAMLLINT_RENDERED, str(RULES),
             str(TESTS / "alerts_test.yaml")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_rendered(rendered):
    name, _, _, _, path = rendered
    r = run([tool("yamllint"), "-s", "-f", "parsable", "-d", YAMLLINT_RENDERED, str(path)])
    assert r.returncode == 0, f"{name}:\n{r.stdout}{r.stderr}"


# --- the schema rejects bad input, naming the field -------------------------

@pytest.mark.parametrize("values, field, why", [
    ({"supernode": {"replicaCount": "three"}}, "/supernode/replicaCount", "want integer"),
    ({"bootstrapToken": {"validDays": -1}}, "/bootstrapToken/validDays", "minimum"),
    ({"bootstrapToken": {"value": "a token with spaces in it"}}, "/bootstrapToken/value", "pattern"),
    ({"supernode": {"config": {"replicas": 9}}}, "/supernode/config/replicas", "maximum"),
    ({"supernode": {"config": {"auth": "basic"}}}, "/supernode/config/auth", "value must be one of"),
    ({"supernode": {"config": {"min-expires": "60s"}}}, "/supernode/config/min-expires", "want integer"),
    ({"supernode": {"config": {"domian": "x"}}}, "/supernode/config", "domian"),
    ({"supernode": {"config": {"trusted": ["10.0.0.1"]}}}, "/supernode/config/trusted/0", "pattern"),
    ({"supernode": {"config": {"source-rate-limit": -1}}}, "/supernode/config/source-rate-limit", "minimum"),
    ({"ports": {"sip": 70000}}, "/ports/sip", "maximum"),
    ({"etcd": {"endpoints": ["ftp://etcd:2379"]}}, "/etcd/endpoints/0", "pattern"),
    ({"etcd": {"clientSecrets": {"etcd": "x"}}}, "/etcd/clientSecrets", "etcd"),
    ({"sipService": {"externalTrafficPolicy": "Nearest"}}, "/sipService/externalTrafficPolicy", "value must be one of"),
    ({"bootstrapToken": {"value": "short"}}, "/bootstrapToken/value", "pattern"),
    ({"monitoring": {"dashboards": {"enabled": "yes"}}}, "/monitoring/dashboards/enabled", "want boolean"),
])
def test_schema_rejects_wrong_values(chart, values, field, why):
    with pytest.raises(helm_python.HelmValuesError) as e:
        chart.validate_schema(values)
    msg = str(e.value)
    assert f"at '{field}'" in msg and why in msg, msg


@pytest.mark.parametrize("values, field, missing", [
    ({"domain": None}, "", "domain"),
    ({"supernode": {"config": {"replicas": None}}}, "/supernode/config", "replicas"),
    ({"image": {"repository": None}}, "/image", "repository"),
    ({"supernode": {"resources": {"limits": None}}}, "/supernode/resources", "limits"),
])
def test_schema_rejects_missing_required_values(chart, values, field, missing):
    # Helm drops keys set to null, so null is how a user removes a default.
    with pytest.raises(helm_python.HelmValuesError) as e:
        chart.validate_schema(values)
    msg = str(e.value)
    assert f"at '{field}': missing property '{missing}'" in msg, msg


def test_schema_accepts_every_shipped_value_set(chart, tmp_path_factory):
    for name, make in VALUE_SETS.items():
        chart.validate_schema(make(tmp_path_factory))


def test_render_fails_clearly_without_etcd(chart):
    with pytest.raises(helm_python.HelmError) as e:
        chart.render({"etcd": {"enabled": False, "endpoints": []}}, name=RELEASE, namespace=NAMESPACE,
                     is_install=True)
    assert "etcd.enabled" in str(e.value) and "etcd.endpoints" in str(e.value)


def test_render_fails_clearly_without_a_provisioning_certificate(chart):
    # With the CA in a Secret the chart cannot read, it cannot sign one.
    with pytest.raises(helm_python.HelmError) as e:
        chart.render({"ca": {"existingSecret": "farm-ca"}}, name=RELEASE, namespace=NAMESPACE,
                     is_install=True)
    assert "provisioning.tls.existingSecret" in str(e.value)


@pytest.mark.parametrize("values_name", ["default", "inline"])
def test_the_chart_issues_provisioning_a_certificate_from_the_farm_ca(chart, values_name, tmp_path_factory):
    values = VALUE_SETS[values_name](tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("pki")
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    secrets = {d["metadata"]["name"]: d for d in load_yaml_docs(out["ringmesh/templates/secrets.yaml"])}
    ca = secrets[f"{RELEASE}-ringmesh-ca"]
    tls = secrets[f"{RELEASE}-ringmesh-provisioning-tls"]
    assert ca["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "a CA is never deleted"
    files = {}
    for name, b64 in [("ca.pem", ca["data"]["tls.crt"]), ("bundle.pem", tls["data"]["ca.crt"]),
                      ("server.pem", tls["data"]["tls.crt"])]:
        files[name] = tmp_path / name
        files[name].write_bytes(base64.b64decode(b64))
    if values_name == "inline":
        assert files["ca.pem"].read_text() == values["ca"]["cert"]
    assert files["ca.pem"].read_bytes() == files["bundle.pem"].read_bytes()
    verify = run(["openssl", "verify", "-CAfile", str(files["ca.pem"]), str(files["server.pem"])], timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = run(["openssl", "x509", "-in", str(files["server.pem"]), "-noout", "-ext", "subjectAltName"],
               timeout=30).stdout
    assert "DNS:control.ringmesh.internal" in text, text


def test_render_fails_on_half_a_ca(chart):
    with pytest.raises(helm_python.HelmError) as e:
        chart.render({"ca": {"cert": "-----BEGIN CERTIFICATE-----"}}, name=RELEASE, namespace=NAMESPACE,
                     is_install=True)
    assert "ca.cert and ca.key" in str(e.value)


# --- what the chart must contain ---------------------------------------------

def flags(container):
    """{flag: [values]} of a container's args (`--flag value` pairs)."""
    args = container["args"]
    out = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            out.setdefault(a[2:], []).append(args[i + 1] if i + 1 < len(args) else None)
    return out


def test_every_object_is_namespaced_and_labelled(rendered):
    _, _, _, docs, _ = rendered
    for d in docs:
        md = d["metadata"]
        assert md.get("namespace") == NAMESPACE, md["name"]
        assert md["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert md["labels"]["app.kubernetes.io/part-of"] == "ringmesh"


def test_supernode_statefulset(rendered):
    name, values, _, docs, _ = rendered
    sts = one(docs, "StatefulSet", "supernode")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    f = flags(c)
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == f"{RELEASE}-ringmesh-overlay"
    assert c["args"][0] == "supernode"
    # Every flag a supernode in a cluster needs, by name.
    for flag in ["name", "domain", "sip", "advertise", "overlay", "seed", "metrics", "data", "replicas", "auth",
                 "provisioning", "enrollment", "etcd", "admin"]:
        assert flag in f, f"{name}: --{flag} missing"
    tls = values.get("sipTls", {}).get("enabled", False)
    assert f["sip"] == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"] + (
        ["tls:0.0.0.0:5061", "wss:0.0.0.0:7443"] if tls else [])
    assert f["overlay"] == ["0.0.0.0:5160"]
    assert f["overlay-advertise"] == ["$(POD_IP)"], "peers link to the pod, not the load balancer"
    assert f["metrics"] == ["0.0.0.0:5360"]
    assert f["data"] == ["/var/lib/ringmesh"]
    assert f["admin"] == ["127.0.0.1:5260"], "admin API stays on loopback"
    # The bootstrap token: only the init container that enrolls sees it.
    assert "bootstrap-token-file" not in f
    (init,) = pod["initContainers"]
    fi = flags(init)
    assert init["args"][0] == "enroll"
    assert fi["bootstrap-token-file"] == ["/etc/ringmesh/bootstrap/token"]
    assert fi["data"] == f["data"] and fi["enrollment"] == f["enrollment"] and fi["name"] == f["name"]
    assert {m["name"] for m in init["volumeMounts"]} == {"data", "bootstrap-token"}
    assert "bootstrap-token" not in {m["name"] for m in c["volumeMounts"]}
    assert_hardened(pod, init)
    n = spec["replicas"]
    own_seeds = [s for s in f["seed"] if ".svc:" in s]
    assert own_seeds == [f"{sts['metadata']['name']}-{i}.{spec['serviceName']}.{NAMESPACE}.svc:5160"
                         for i in range(n)], "seeds = the pods' stable DNS names on the overlay port"
    adv = (values.get("supernode", {}).get("config", {}) or {}).get("advertise")
    assert f["advertise"] == [adv or "$(POD_IP)"]
    trusted = (values.get("supernode", {}).get("config", {}) or {}).get("trusted") or []
    assert f.get("trusted", []) == trusted, "one --trusted per trusted element, none by default"
    # Anti-affinity, probes, drain, security.
    aff = pod["affinity"]["podAntiAffinity"]
    assert aff.get("requiredDuringSchedulingIgnoredDuringExecution") or \
        aff.get("preferredDuringSchedulingIgnoredDuringExecution")
    if name == "full":
        assert aff.get("requiredDuringSchedulingIgnoredDuringExecution")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[:5] == ["ringmesh", "ctl", "--admin", "127.0.0.1:5260", "drain"]
    grace = int(pre[pre.index("--grace-seconds") + 1])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert_hardened(pod, c)
    # The data dir on a persistent volume; the bootstrap token from a Secret.
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/var/lib/ringmesh"
    secret_vols = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert "bootstrap-token" in secret_vols
    # Pod 0 alone may found a ring: the binary decides from its name, no
    # shell needed in the image.
    assert c["command"] == ["ringmesh"]
    args = c["args"]
    assert args[args.index("--bootstrap-ordinal") + 1] == "0"
    assert int(args[args.index("--bootstrap-after") + 1]) > 0


def assert_hardened(pod, c):
    psc, sc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] >= 10000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for k in ["requests", "limits"]:
        assert c["resources"][k]["cpu"] and c["resources"][k]["memory"]


def test_every_workload_is_hardened(rendered):
    _, _, _, docs, _ = rendered
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert workloads
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            assert_hardened(pod, c)
            assert "readinessProbe" in c and "livenessProbe" in c, w["metadata"]["name"]


def test_services(rendered):
    _, values, _, docs, _ = rendered
    services = {s["metadata"]["name"].rsplit("-", 1)[-1]: s for s in objects(docs, "Service")}
    overlay = services["overlay"]["spec"]
    assert overlay["clusterIP"] == "None" and overlay["publishNotReadyAddresses"] is True
    assert {(p["name"], p["protocol"]) for p in overlay["ports"]} >= {("overlay", "UDP")}
    sip = services["sip"]["spec"]
    assert sip["type"] == "LoadBalancer" and sip["externalTrafficPolicy"] == "Local"
    tls = {(5061, "TCP"), (7443, "TCP")} if values.get("sipTls", {}).get("enabled") else set()
    assert {(p["port"], p["protocol"]) for p in sip["ports"]} == {(5060, "UDP"), (5060, "TCP")} | tls
    lb = values.get("sipService", {}).get("loadBalancerIP")
    if lb:
        assert sip["loadBalancerIP"] == lb
    for c in ("provisioning", "enrollment"):
        assert services[c]["spec"]["type"] == "ClusterIP"
    pdb = one(docs, "PodDisruptionBudget", "supernode")
    assert pdb["spec"]["maxUnavailable"] == 1


def render_sip_tls(chart, sip_tls, **extra):
    values = {"sipTls": {"enabled": True, **sip_tls}, **extra}
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return load_yaml_docs("".join(f"---\n{v}\n" for k, v in sorted(out.items()) if k.endswith(".yaml")))


def test_sip_tls_from_a_secret_is_mounted_whole_and_served_on_the_sip_service(chart):
    docs = render_sip_tls(chart, {"existingSecret": "sip-cert", "clientCaSecret": "partners-ca",
                                  "peerCaSecret": "peers-ca",
                                  "wsOrigins": ["https://phone.example.net"]})
    pod = one(docs, "StatefulSet", "supernode")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    f = flags(c)
    assert f["sip"][2:] == ["tls:0.0.0.0:5061", "wss:0.0.0.0:7443"]
    assert f["tls-cert"] == ["/etc/ringmesh/sip-tls"]
    assert f["tls-client-ca"] == ["/etc/ringmesh/sip-client-ca/ca.crt"]
    assert f["peer-ca"] == ["/etc/ringmesh/sip-peer-ca/ca.crt"]
    assert f["ws-origin"] == ["https://phone.example.net"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["sip-tls"]["mountPath"] == "/etc/ringmesh/sip-tls" and mounts["sip-tls"]["readOnly"]
    assert "subPath" not in mounts["sip-tls"], "a subPath mount never sees a renewed Secret"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["sip-tls"]["secret"]["secretName"] == "sip-cert"
    assert {i["key"] for i in vols["sip-tls"]["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert vols["sip-client-ca"]["secret"]["secretName"] == "partners-ca"
    assert vols["sip-peer-ca"]["secret"]["secretName"] == "peers-ca"
    assert mounts["sip-peer-ca"]["mountPath"] == "/etc/ringmesh/sip-peer-ca"
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert ports["sip-tls"] == (5061, "TCP") and ports["sip-wss"] == (7443, "TCP")
    assert not objects(docs, "Certificate"), "the operator's Secret: no Certificate"
    # Split Services: TLS and WSS go with TCP.
    docs = render_sip_tls(chart, {"existingSecret": "sip-cert", "websocket": False},
                          sipService={"splitProtocols": True})
    svc = {s["metadata"]["name"]: s["spec"] for s in objects(docs, "Service")}
    assert [p["name"] for p in svc[f"{RELEASE}-ringmesh-sip-tcp"]["ports"]] == ["sip-tcp", "sip-tls"]
    assert [p["name"] for p in svc[f"{RELEASE}-ringmesh-sip-udp"]["ports"]] == ["sip-udp"]


def test_sip_tls_by_cert_manager_names_the_domain_and_the_advertised_name(chart):
    docs = render_sip_tls(chart, {"certManager": {"enabled": True, "issuerRef": {"name": "acme"}}},
                          domain="ims.example.net",
                          supernode={"config": {"advertise": "sip.ims.example.net"}})
    (cert,) = objects(docs, "Certificate")
    spec = cert["spec"]
    assert spec["dnsNames"] == ["ims.example.net", "sip.ims.example.net"]
    assert spec["issuerRef"] == {"name": "acme", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert set(spec["usages"]) == {"server auth", "client auth"}
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    pod = one(docs, "StatefulSet", "supernode")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["sip-tls"]["secret"]["secretName"] == spec["secretName"]
    # An advertised address is not a DNS name.
    docs = render_sip_tls(chart, {"certManager": {"enabled": True, "issuerRef": {"name": "acme"}}},
                          supernode={"config": {"advertise": "203.0.113.7"}})
    (cert,) = objects(docs, "Certificate")
    assert cert["spec"]["dnsNames"] == ["ringmesh.test"]


@pytest.mark.parametrize("sip_tls, why", [
    ({}, "sipTls.existingSecret"),
    ({"certManager": {"enabled": True}}, "issuerRef.name is required"),
])
def test_sip_tls_without_a_certificate_fails_clearly(chart, sip_tls, why):
    with pytest.raises(Exception, match=re.escape(why)):
        render_sip_tls(chart, sip_tls)


def test_sip_service_split_and_class(chart):
    out = chart.render({"sipService": {"splitProtocols": True, "loadBalancerIP": "198.51.100.7",
                                       "loadBalancerClass": "networking.gke.io/l4-regional-external"}},
                       name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = load_yaml_docs(out["ringmesh/templates/supernode-services.yaml"])
    sip = {s["metadata"]["name"]: s["spec"] for s in docs if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer"}
    assert set(sip) == {f"{RELEASE}-ringmesh-sip-udp", f"{RELEASE}-ringmesh-sip-tcp"}
    for name, spec in sip.items():
        assert spec["loadBalancerIP"] == "198.51.100.7", "one address for both protocols"
        assert spec["loadBalancerClass"] == "networking.gke.io/l4-regional-external"
        assert [p["protocol"] for p in spec["ports"]] == [name.rsplit("-", 1)[1].upper()]


def test_control_plane_and_etcd(rendered):
    name, values, _, docs, _ = rendered
    prov = flags(one(docs, "Deployment", "provisioning")["spec"]["template"]["spec"]["containers"][0])
    enr_pod = one(docs, "Deployment", "enrollment")["spec"]["template"]["spec"]
    enr = flags(enr_pod["containers"][0])
    etcd = values.get("etcd", {})
    if etcd.get("enabled", True):
        sts = one(docs, "StatefulSet", "etcd")
        n = sts["spec"]["replicas"]
        assert prov["etcd"] == [f"https://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc:2379"
                                for i in range(n)]
        env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert len(env["ETCD_INITIAL_CLUSTER"].split(",")) == n
        assert all(p.split("=", 1)[1].startswith("https://") for p in env["ETCD_INITIAL_CLUSTER"].split(","))
        # TLS for clients and peers, and a client certificate required of both.
        assert env["ETCD_CLIENT_CERT_AUTH"] == "true" and env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
        assert env["ETCD_LISTEN_CLIENT_URLS"].startswith("https://")
    else:
        assert not objects(docs, "StatefulSet") or all(
            s["metadata"]["labels"]["app.kubernetes.io/component"] != "etcd" for s in objects(docs, "StatefulSet"))
        assert prov["etcd"] == etcd["endpoints"]
    assert enr["etcd"] == prov["etcd"]
    assert enr["bootstrap-token-file"] == ["/etc/ringmesh/bootstrap/token"]
    assert enr["ca-cert"] == ["/etc/ringmesh/ca/tls.crt"], "the CA always comes from a Secret"
    # Revoke always needs the admin token: a generated one unless given.
    assert enr["admin-token-file"] == ["/etc/ringmesh/admin/token"]
    assert "command" not in enr_pod["containers"][0], "no shell reads the token"
    admin_vol = next(v for v in enr_pod["volumes"] if v["name"] == "admin-token")
    want_admin = values.get("enrollment", {}).get("adminToken", {}).get("existingSecret") \
        or f"{RELEASE}-ringmesh-enrollment-admin"
    assert admin_vol["secret"]["secretName"] == want_admin
    if not values.get("enrollment", {}).get("adminToken", {}).get("existingSecret"):
        generated = next(s for s in objects(docs, "Secret") if s["metadata"]["name"] == want_admin)
        assert len(base64.b64decode(generated["data"]["token"])) >= 16
    # The farm secret enrollment keeps in etcd is sealed under a store key.
    assert enr["store-key-file"] == ["/etc/ringmesh/store-key/key"]
    sk_vol = next(v for v in enr_pod["volumes"] if v["name"] == "store-key")
    want_sk = values.get("enrollment", {}).get("storeKey", {}).get("existingSecret") \
        or f"{RELEASE}-ringmesh-store-key"
    assert sk_vol["secret"]["secretName"] == want_sk
    if want_sk == f"{RELEASE}-ringmesh-store-key":
        sk = next(s for s in objects(docs, "Secret") if s["metadata"]["name"] == want_sk)
        assert re.fullmatch(r"[0-9a-f]{64}", base64.b64decode(sk["data"]["key"]).decode())
    assert prov["tls-cert"] == ["/etc/ringmesh/tls/tls.crt"] and "plaintext" not in prov
    node = flags(one(docs, "StatefulSet", "supernode")["spec"]["template"]["spec"]["containers"][0])
    assert prov["enrollment"] == node["enrollment"], "provisioning follows the revocations nodes follow"
    assert "plaintext" not in enr, "enrollment serves TLS"
    prov_pod = one(docs, "Deployment", "provisioning")["spec"]["template"]["spec"]
    tls_vol = next(v for v in prov_pod["volumes"] if v["name"] == "tls")
    want = values.get("provisioning", {}).get("tls", {}).get("existingSecret") or f"{RELEASE}-ringmesh-provisioning-tls"
    assert tls_vol["secret"]["secretName"] == want
    if name == "inline":
        secrets = {s["metadata"]["name"]: s for s in objects(docs, "Secret")}
        ca = secrets[f"{RELEASE}-ringmesh-ca"]
        assert ca["type"] == "kubernetes.io/tls"
        assert base64.b64decode(ca["data"]["tls.crt"]).decode() == values["ca"]["cert"]
        token = base64.b64decode(secrets[f"{RELEASE}-ringmesh-bootstrap"]["data"]["token"]).decode()
        word, uses, expires = token.splitlines()[0].split()
        assert word == values["bootstrapToken"]["value"]
        # Its limits: one enrollment per pod plus the spares, for a week.
        pods = one(docs, "StatefulSet", "supernode")["spec"]["replicas"]
        assert uses == f"uses={pods + 2}"
        assert abs(int(expires.removeprefix("expires=")) - time.time() - 7 * 86400) < 3600
        # The token file pins the CA the chart holds: SHA-256 of its DER.
        der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=values["ca"]["cert"].encode(),
                             capture_output=True, check=True, timeout=30).stdout
        assert token.splitlines()[1] == "ca-sha256:" + hashlib.sha256(der).hexdigest()
    if name == "default":
        boot = next(s for s in objects(docs, "Secret") if s["metadata"]["name"] == f"{RELEASE}-ringmesh-bootstrap")
        token = base64.b64decode(boot["data"]["token"]).decode()
        assert len(token.split()[0]) >= 16, "a generated bootstrap token is long enough for enrollment"
        assert token.splitlines()[1].startswith("ca-sha256:"), "and pins the generated CA"


def test_network_policies_can_be_left_to_the_cluster(chart):
    out = chart.render({"networkPolicy": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "kind: NetworkPolicy" not in "".join(out.values())


def test_network_policies(rendered):
    _, values, _, docs, _ = rendered
    pols = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"] for p in objects(docs, "NetworkPolicy")}
    sn = pols["supernode"]
    rules = {(p["port"], p["protocol"]): r.get("from") for r in sn["ingress"] for p in r["ports"]}
    assert rules[(5060, "UDP")] is None and rules[(5060, "TCP")] is None, "SIP open"
    if values.get("sipTls", {}).get("enabled"):
        assert rules[(5061, "TCP")] is None and rules[(7443, "TCP")] is None, "TLS and WSS open"
    overlay_from = rules[(5160, "UDP")]
    assert overlay_from == [{"podSelector": {"matchLabels": sn["podSelector"]["matchLabels"]}}], \
        "only supernodes reach the overlay port"
    farm = {"app.kubernetes.io/name": "ringmesh", "app.kubernetes.io/instance": RELEASE}
    for c, port in (("provisioning", 5660), ("enrollment", 5661)):
        r = [r for r in pols[c]["ingress"] if r["ports"][0]["port"] == port][0]
        assert r["from"][0] == {"podSelector": {"matchLabels": farm}}, f"only the farm reaches {c}"
    if "etcd" in pols:
        r = [r for r in pols["etcd"]["ingress"] if r["ports"][0]["port"] == 2379][0]
        assert r["from"] == [{"podSelector": {"matchLabels": farm}}]
    # Every pod of the release is selected by some policy (no open pod).
    for w in [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]:
        comp = w["metadata"]["labels"]["app.kubernetes.io/component"]
        assert comp in pols, f"{comp} has no NetworkPolicy"


def test_monitoring_objects(rendered, tmp_path):
    name, values, _, docs, _ = rendered
    enabled = name == "full"
    sms, rules, cms = objects(docs, "ServiceMonitor"), objects(docs, "PrometheusRule"), \
        [c for c in objects(docs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    if not enabled:
        assert not sms and not rules and not cms
        return
    (sm,) = sms
    ep = sm["spec"]["endpoints"][0]
    assert ep["port"] == "metrics"
    assert ep["relabelings"][0]["targetLabel"] == "job" and ep["relabelings"][0]["replacement"] == "ringmesh-$1"
    scraped = [s for s in objects(docs, "Service")
               if all(s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped} == \
        {"supernode", "provisioning", "enrollment", "etcd"}
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in scraped)
    (rule,) = rules
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "the PrometheusRule is the rules file verbatim"
    f = tmp_path / "rendered-rules.yaml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    r = run(["promtool", "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    shipped = {p.name for p in (CHART / "dashboards").glob("*.json")}
    got = {}
    for c in cms:
        (k, v), = c["data"].items()
        got[k] = json.loads(v)
    assert set(got) == shipped
    for k, d in got.items():
        assert d == json.loads((CHART / "dashboards" / k).read_text())


def test_notes(rendered):
    name, values, out, _, _ = rendered
    notes = out["ringmesh/templates/NOTES.txt"]
    assert "rollout status statefulset/" in notes
    if values.get("supernode", {}).get("config", {}).get("advertise"):
        assert "WARNING" not in notes
    else:
        assert "supernode.config.advertise is empty" in notes


def test_values_document_every_config_key():
    """values.yaml names every supernode config key the schema knows, and
    the schema knows every key `ringmesh supernode --help` lists (a key is
    its flag) that the chart does not set itself."""
    import json
    import os
    import subprocess
    from conftest import REPO
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = set(schema["properties"]["supernode"]["properties"]["config"]["properties"])
    binary = os.environ.get("RINGMESH_BIN", str(REPO / "target" / "release" / "ringmesh"))
    help_text = subprocess.run([binary, "supernode", "--help"], capture_output=True, text=True,
                               check=True, timeout=30).stdout
    keys = set(re.findall(r"^\s+--([a-z0-9-]+)", help_text, re.M)) - {"config", "help"}
    assert {"min-expires", "overload-delay-interval-ms"} <= keys, sorted(keys)
    chart_set = {"name", "domain", "sip", "overlay", "overlay-advertise", "data", "metrics", "admin", "provisioning", "enrollment",
                 "bootstrap-token-file", "etcd", "bootstrap-after", "bootstrap-ordinal",
                 # etcd TLS files come from the component's client-certificate Secret
                 "etcd-ca", "etcd-cert", "etcd-key",
                 # the chart keeps the admin API on 127.0.0.1, in plaintext
                 "admin-tls",
                 # identity files and the farm secret come from enrollment into the data dir
                 "cert", "key", "ca", "crl", "farm-secret",
                 # a subscriber file is for a lab; a farm uses provisioning
                 "subscribers",
                 # SIP TLS: from sipTls (the Secret's mount, the client CA, origins)
                 "tls-cert", "tls-client-ca", "peer-ca", "ws-origin"}
    assert keys - chart_set <= known, f"config keys missing from the schema: {sorted(keys - chart_set - known)}"
    assert known <= keys, f"schema keys the supernode does not know: {sorted(known - keys)}"
    text = (CHART / "values.yaml").read_text()
    for k in known:
        assert re.search(rf"^\s+#?\s*{re.escape(k)}:", text, re.M), f"values.yaml does not mention {k}"


def cert_subject(pem):
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], input=pem,
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_etcd_speaks_tls_and_each_component_is_its_own_user(rendered, tmp_path):
    """The bundled etcd gets a CA of its own; each component mounts only its
    own client certificate, whose common name is its etcd user; a hook Job
    runs `ringmesh etcd-auth` as root. An external etcd over plain HTTP gets
    no TLS flags."""
    name, values, _, docs, _ = rendered
    secrets = {s["metadata"]["name"]: s for s in objects(docs, "Secret")}
    pods = {
        "supernode": one(docs, "StatefulSet", "supernode")["spec"]["template"]["spec"],
        "provisioning": one(docs, "Deployment", "provisioning")["spec"]["template"]["spec"],
        "enrollment": one(docs, "Deployment", "enrollment")["spec"]["template"]["spec"],
    }
    if not values.get("etcd", {}).get("enabled", True):
        for pod in pods.values():
            assert "etcd-ca" not in flags(pod["containers"][0])
        assert not [j for j in objects(docs, "Job")]
        return
    b64 = lambda s, k: base64.b64decode(s["data"][k]).decode()  # noqa: E731
    etcd_ca = b64(secrets[f"{RELEASE}-ringmesh-etcd-ca"], "tls.crt")
    (tmp_path / "etcd-ca.crt").write_text(etcd_ca)
    farm_ca = secrets.get(f"{RELEASE}-ringmesh-ca")
    if farm_ca:
        assert b64(farm_ca, "tls.crt") != etcd_ca, "etcd trusts its own CA, never the farm's"
    for component, pod in pods.items():
        (c,) = pod["containers"]
        f = flags(c)
        assert f["etcd-cert"] == ["/etc/ringmesh/etcd/tls.crt"] and f["etcd-ca"] == ["/etc/ringmesh/etcd/ca.crt"]
        mounted = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v
                   and "etcd-client" in v["secret"]["secretName"]]
        assert mounted == [f"{RELEASE}-ringmesh-etcd-client-{component}"], "its own certificate, no other"
        crt = b64(secrets[mounted[0]], "tls.crt")
        assert f"CN=ringmesh-{component}" in cert_subject(crt)
        (tmp_path / "c.crt").write_text(crt)
        check = run(["openssl", "verify", "-CAfile", str(tmp_path / "etcd-ca.crt"), str(tmp_path / "c.crt")])
        assert check.returncode == 0, check.stdout + check.stderr
    server = b64(secrets[f"{RELEASE}-ringmesh-etcd-server"], "tls.crt")
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=server,
                          capture_output=True, text=True, check=True, timeout=30).stdout
    assert f"DNS:*.{RELEASE}-ringmesh-etcd.{NAMESPACE}.svc" in sans, sans
    (job,) = objects(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    jpod = job["spec"]["template"]["spec"]
    (jc,) = jpod["containers"]
    assert jc["args"][0] == "etcd-auth"
    assert flags(jc)["etcd"] == flags(pods["provisioning"]["containers"][0])["etcd"]
    root = next(v for v in jpod["volumes"] if "secret" in v)["secret"]["secretName"]
    assert "CN=root" in cert_subject(b64(secrets[root], "tls.crt"))
    assert_hardened(jpod, jc)


def test_an_external_etcd_over_tls_takes_each_components_secret(chart):
    secrets = {c: f"etcd-{c}" for c in ["supernode", "provisioning", "enrollment"]}
    ext = {"enabled": False, "endpoints": ["https://etcd.db:2379"], "clientSecrets": secrets}
    docs = load_yaml_docs("".join(f"---\n{v}\n" for k, v in sorted(
        chart.render({"etcd": ext}, name=RELEASE, namespace=NAMESPACE, is_install=True).items())
        if k.endswith(".yaml")))
    for kind, component in [("StatefulSet", "supernode"), ("Deployment", "provisioning"),
                            ("Deployment", "enrollment")]:
        pod = one(docs, kind, component)["spec"]["template"]["spec"]
        f = flags(pod["containers"][0])
        assert f["etcd"] == ["https://etcd.db:2379"] and f["etcd-key"] == ["/etc/ringmesh/etcd/tls.key"]
        vol = next(v for v in pod["volumes"] if v["name"] == "etcd-client")
        assert vol["secret"]["secretName"] == secrets[component]
    assert not objects(docs, "Job"), "an external etcd's users are the operator's to set up"
    # Half a configuration is refused, naming what is missing.
    for bad, why in [
        (dict(ext, clientSecrets=dict(secrets, enrollment="")), "etcd.clientSecrets.enrollment"),
        (dict(ext, endpoints=["http://etcd.db:2379"]), "need https://"),
    ]:
        with pytest.raises(Exception) as e:
            chart.render({"etcd": bad}, name=RELEASE, namespace=NAMESPACE, is_install=True)
        assert why in str(e.value), str(e.value)


# --- what `lookup` finds at install or upgrade time --------------------------

class SecretsApi:
    """The slice of a Kubernetes API server that `lookup "v1" "Secret"`
    reads (discovery, then GET of one Secret), over 127.0.0.1, holding the
    given Secrets. Kubernetes cannot run here; this is what Helm sees of it."""

    def __init__(self, namespace, secrets):
        import http.server
        import threading

        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                prefix = f"/api/v1/namespaces/{namespace}/secrets/"
                if path == "/api":
                    body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
                elif path == "/apis":
                    body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
                elif path == "/api/v1":
                    body = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                         "verbs": ["get", "list"]}]}
                elif path == "/version":
                    body = {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
                elif path.startswith(prefix) and path[len(prefix):] in api.secrets:
                    body = api.secrets[path[len(prefix):]]
                else:
                    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                            "code": 404}
                data = json.dumps(body).encode()
                self.send_response(body.get("code", 200))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.secrets = {
            name: {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace},
                   "type": kind, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
            for name, (kind, data) in secrets.items()}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def render(self, chart, values):
        config = helm_python.Config(kube_apiserver=self.url, namespace=NAMESPACE, kubeconfig_content=(
            "apiVersion: v1\nkind: Config\nclusters: [{name: t, cluster: {server: '" + self.url + "'}}]\n"
            "contexts: [{name: t, context: {cluster: t, user: t}}]\ncurrent-context: t\nusers: [{name: t, user: {}}]\n"))
        try:
            out = config.render(chart, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        finally:
            config.close()
            self.server.shutdown()
        return load_yaml_docs("".join(f"---\n{v}\n" for k, v in sorted(out.items()) if k.endswith(".yaml")))


def test_an_operators_ca_secret_is_pinned_and_a_kept_token_keeps_its_word(chart, tmp_path):
    """With ca.existingSecret the chart reads the CA at install or upgrade:
    the bootstrap token pins it and provisioning's certificate comes from it.
    A token kept from an earlier release keeps its secret word and gets
    fresh limits."""
    crt, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=operator CA"],
        check=True, capture_output=True, timeout=30)
    word = "an-earlier-release-token-0123456789"
    api = SecretsApi(NAMESPACE, {
        "operator-ca": ("kubernetes.io/tls", {"tls.crt": crt.read_text(), "tls.key": key.read_text()}),
        f"{RELEASE}-ringmesh-bootstrap": ("Opaque", {"token": f"{word} uses=5 expires=1\nca-sha256:00\n"}),
    })
    docs = api.render(chart, {"ca": {"existingSecret": "operator-ca"}})
    secrets = {s["metadata"]["name"]: s for s in objects(docs, "Secret")}
    assert f"{RELEASE}-ringmesh-ca" not in secrets, "the operator's Secret is used, not copied"
    token = base64.b64decode(secrets[f"{RELEASE}-ringmesh-bootstrap"]["data"]["token"]).decode().splitlines()
    first = token[0].split()
    assert first[0] == word and first[1] == "uses=5", token[0]
    assert int(first[2].removeprefix("expires=")) > time.time() + 6 * 86400, "a fresh expiry"
    der = subprocess.run(["openssl", "x509", "-outform", "DER", "-in", str(crt)],
                         capture_output=True, check=True, timeout=30).stdout
    assert token[1] == "ca-sha256:" + hashlib.sha256(der).hexdigest(), "pins the operator's CA"
    prov = secrets[f"{RELEASE}-ringmesh-provisioning-tls"]
    issued = base64.b64decode(prov["data"]["tls.crt"])
    check = subprocess.run(["openssl", "verify", "-CAfile", str(crt)], input=issued,
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
