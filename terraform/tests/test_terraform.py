"""Terraform without terraform: every .tf parses (python-hcl2), the
providers are pinned, variables and outputs are described and documented in
the README beside them, the module's chart path and values match the chart,
and checkov passes with no failed check (skips only inline, with a reason).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess

import hcl2
import pytest
import yaml

TF = pathlib.Path(__file__).resolve().parents[1]
REPO = TF.parent
DIRS = [TF / "modules" / "ringmesh", TF / "examples" / "gke"]
FILES = sorted(TF.rglob("*.tf"))


def unwrap(x):
    while isinstance(x, list) and len(x) == 1:
        x = x[0]
    return x


def load(path):
    with open(path) as f:
        return hcl2.load(f)


def blocks(d, kind):
    out = {}
    for item in d.get(kind, []):
        out.update(item)
    return out


def checkov():
    venv = pathlib.Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv" / "ops")) / "bin" / "checkov"
    return str(venv) if venv.exists() else shutil.which("checkov")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(TF)) for p in FILES])
def test_parses(path):
    d = load(path)
    assert d, f"{path} is empty"


@pytest.mark.parametrize("d", DIRS, ids=[p.name for p in DIRS])
def test_layout_and_pinned_providers(d):
    for f in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (d / f).exists(), f"{d.name}/{f} missing"
    tf = unwrap(load(d / "versions.tf")["terraform"])
    assert re.match(r">= 1\.\d+\.\d+, < 2\.0\.0", unwrap(tf["required_version"]))
    providers = unwrap(tf["required_providers"])
    for name, spec in providers.items():
        spec = unwrap(spec)
        assert spec["source"].startswith("hashicorp/"), name
        assert re.fullmatch(r"~> \d+\.\d+\.\d+", spec["version"]), f"{name}: pin to a patch range, got {spec['version']}"


@pytest.mark.parametrize("d", DIRS, ids=[p.name for p in DIRS])
def test_variables_and_outputs_are_documented(d):
    readme = (d / "README.md").read_text()
    for name, body in blocks(load(d / "variables.tf"), "variable").items():
        assert unwrap(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
        assert f"| `{name}` |" in readme, f"{d.name}/README.md does not document variable {name}"
    for name, body in blocks(load(d / "outputs.tf"), "output").items():
        assert unwrap(body.get("description", "")).strip(), f"output {name} has no description"
        assert f"| `{name}` |" in readme, f"{d.name}/README.md does not document output {name}"


def test_module_installs_the_chart_with_known_values():
    main = load(TF / "modules" / "ringmesh" / "main.tf")
    resources = {}
    for item in main["resource"]:
        for kind, named in item.items():
            for name in named:
                resources.setdefault(kind, []).append(name)
    assert "kubernetes_namespace_v1" in resources
    assert "kubernetes_secret_v1" in resources and {"bootstrap", "ca"} <= set(resources["kubernetes_secret_v1"])
    assert resources["helm_release"] == ["ringmesh"]
    text = (TF / "modules" / "ringmesh" / "main.tf").read_text()
    assert '"${path.module}/../../../helm/ringmesh"' in text
    assert (TF / "modules" / "ringmesh" / "../../../helm/ringmesh/Chart.yaml").resolve().exists()
    # Every top-level key of the module's values exists in the chart.
    chart_values = yaml.safe_load((REPO / "helm" / "ringmesh" / "values.yaml").read_text())
    local_values = unwrap(unwrap(main["locals"])["values"])
    assert set(local_values) <= set(chart_values), set(local_values) - set(chart_values)
    for section in ("supernode", "sipService", "etcd", "monitoring", "image"):
        assert set(unwrap(local_values[section])) <= set(chart_values[section]), section


def test_example_uses_the_module_and_a_udp_capable_load_balancer():
    main = load(TF / "examples" / "gke" / "main.tf")
    mod = unwrap(blocks(main, "module")["ringmesh"])
    assert unwrap(mod["source"]) == "../../modules/ringmesh"
    text = (TF / "examples" / "gke" / "main.tf").read_text()
    assert 'loadBalancerClass = "networking.gke.io/l4-regional-external"' in text
    assert 'datapath_provider = "ADVANCED_DATAPATH"' in text
    assert "google_compute_address" in text and "sip_address       = google_compute_address.sip.address" in text


def test_checkov_terraform():
    exe = checkov()
    assert exe, "checkov not installed (run helm/tests/run.sh)"
    r = subprocess.run([exe, "-d", str(TF), "--framework", "terraform", "--skip-download", "--compact",
                        "--output", "json"], capture_output=True, text=True, timeout=600)
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for rep in reports
              for c in rep.get("results", {}).get("failed_checks", [])]
    assert not failed, f"checkov failed: {failed}"
    passed = sum(len(rep.get("results", {}).get("passed_checks", [])) for rep in reports)
    assert passed >= 30, f"checkov ran only {passed} checks"
    for rep in reports:
        for c in rep.get("results", {}).get("skipped_checks", []):
            reason = (c.get("check_result", {}).get("suppress_comment") or "").strip()
            assert len(reason) > 20, f"{c['check_id']} on {c['resource']} is skipped without a written reason"
