"""The Grafana dashboards, statically: valid JSON generated from
gen_dashboards.py, unique uids, the template variables, a datasource and
targets on every panel, only metrics the services export, and every PromQL
expression accepted by `promtool check rules`. test_live.py then runs every
expression against a real Prometheus scraping a real farm.
"""

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import DASHBOARDS, REPO, TESTS, data_panels, load_dashboards, run, substitute

BOARDS = load_dashboards()
IDS = [p.stem for p, _ in BOARDS]
EXPECTED = {"ringmesh-overview", "ringmesh-sip", "ringmesh-overlay", "ringmesh-node", "ringmesh-control-plane"}


def exported_metrics():
    """Metric names defined in services/*/src/metrics.rs (histograms also as
    _bucket, _sum, _count), plus Prometheus' own `up`."""
    names = set()
    for f in (REPO / "services").glob("*/src/metrics.rs"):
        for name in re.findall(r'"(ringmesh_[a-z0-9_]+)"', f.read_text()):
            names.add(name)
    out = {"up"}
    for n in names:
        out.add(n)
        if n.endswith(("_seconds", "_hops")):
            out.update({n + "_bucket", n + "_sum", n + "_count"})
    return out


def test_every_dashboard_is_there_and_generated():
    assert {d["uid"] for _, d in BOARDS} == EXPECTED
    r = subprocess.run([sys.executable, str(TESTS / "gen_dashboards.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_uids_and_titles_are_unique():
    uids = [d["uid"] for _, d in BOARDS]
    titles = [d["title"] for _, d in BOARDS]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for _, d in BOARDS:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]


@pytest.mark.parametrize("path, board", BOARDS, ids=IDS)
def test_template_variables(path, board):
    v = {x["name"]: x for x in board["templating"]["list"]}
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    for name in ("namespace", "node"):
        var = v[name]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # "All" must also match series without the label (no Kubernetes).
        assert var["includeAll"] is True and var["allValue"] == ".*"


@pytest.mark.parametrize("path, board", BOARDS, ids=IDS)
def test_panels_have_datasource_and_targets(path, board):
    panels = data_panels(board)
    assert panels
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t.get("datasource", p["datasource"]) == p["datasource"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


@pytest.mark.parametrize("path, board", BOARDS, ids=IDS)
def test_queries_filter_on_the_variables(path, board):
    for p in data_panels(board):
        for t in p["targets"]:
            e = t["expr"]
            assert 'namespace=~"$namespace"' in e, f"{p['title']}: {e}"
            supernode = re.search(r"ringmesh_(?!provisioning|enrollment)[a-z_]+\{", e)
            if supernode:
                assert 'node=~"$node"' in e, f"{p['title']}: {e}"
            assert "$__rate_interval" in e or "rate(" not in e or "$__range" in e or "[30d]" in e, \
                f"{p['title']}: rates use $__rate_interval"


@pytest.mark.parametrize("path, board", BOARDS, ids=IDS)
def test_only_exported_metrics(path, board):
    known = exported_metrics()
    for p in data_panels(board):
        for t in p["targets"]:
            # Metric names: identifiers followed by { or [ that are not functions.
            for m in re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", t["expr"]):
                assert m in known, f"{p['title']}: {m} is not exported by any services/*/src/metrics.rs"


def test_every_expression_passes_promtool(tmp_path):
    rules = []
    where = []
    for path, board in BOARDS:
        for p in data_panels(board):
            for t in p["targets"]:
                rules.append({"record": f"dashboard:expr:{len(rules)}", "expr": substitute(t["expr"])})
                where.append(f"{board['uid']} / {p['title']} / {t['refId']}")
    f = tmp_path / "dashboard-expressions.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}))
    r = run(["promtool", "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout + r.stderr
    assert len(rules) >= 100
