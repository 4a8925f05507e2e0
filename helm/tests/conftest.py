"""Shared paths and helpers of the chart, dashboard and alert tests.

Run through helm/tests/run.sh, which prepares the virtualenv (.venv/ops)
and the Debian tools (promtool, prometheus, sipp, etcd, openssl).
"""

import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
HELM = REPO / "helm"
CHART = HELM / "ringmesh"
TESTS = HELM / "tests"
DASHBOARDS = CHART / "dashboards"
RULES = CHART / "alerts" / "ringmesh-rules.yaml"
VENV_BIN = pathlib.Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv" / "ops")) / "bin"

# Grafana's template variables, as the checks substitute them.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
    "$namespace": ".*",
    "$node": ".*",
}


def substitute(expr, overrides=None):
    """A panel expression with Grafana's variables replaced."""
    values = dict(VARIABLES, **(overrides or {}))
    # Longest names first: $__rate_interval before $__range, etc.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def tool(name):
    """A command from the virtualenv, else from PATH."""
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found (run helm/tests/run.sh, which installs it)")
    return found


def run(cmd, timeout=300, **kw):
    """Runs a command with a bound; returns CompletedProcess (text)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def load_dashboards():
    """(path, dashboard JSON) for every shipped dashboard."""
    return [(p, json.loads(p.read_text())) for p in sorted(DASHBOARDS.glob("*.json"))]


def data_panels(dashboard):
    """Panels that show data (rows are only containers), nested ones too."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def load_yaml_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]
