"""The alert rules: `promtool check rules`, `promtool test rules`, and a
unit test that shows each alert firing and each alert silent."""

import re

import yaml

from conftest import RULES, TESTS, run

from test_dashboards import exported_metrics

# Rules may name metrics the services do not export yet (the lead adds them);
# each is listed here with what it is, so nothing unknown slips in.
PENDING_METRICS = {
    "ringmesh_node_certificate_expiry_seconds": "gauge, label node: seconds until the node certificate expires",
}


def alerts():
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules():
    r = run(["promtool", "check", "rules", str(RULES)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules():
    r = run(["promtool", "test", "rules", str(TESTS / "alerts_test.yaml")], timeout=300)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_silent():
    tests = yaml.safe_load((TESTS / "alerts_test.yaml").read_text())
    firing, silent = set(), set()
    for group in tests["tests"]:
        for t in group.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else silent).add(t["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), f"never shown firing: {sorted(names - firing)}"
    assert names - silent == set(), f"never shown silent: {sorted(names - silent)}"


def test_alerts_have_severity_summary_and_runbook():
    ops = (RULES.parents[3] / "docs" / "operations.md").read_text().lower()
    for a in alerts():
        assert a["labels"]["severity"] in ("critical", "warning"), a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
        anchor = a["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == a["alert"].lower()
        # docs/operations.md has a heading named after the alert.
        assert re.search(rf"^#+ .*{re.escape(a['alert'].lower())}", ops, re.M), \
            f"docs/operations.md has no section for {a['alert']}"


def test_rules_use_exported_or_listed_metrics():
    known = exported_metrics() | set(PENDING_METRICS)
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            for m in re.findall(r"\b([a-z_][a-z0-9_:]*)\s*\{", r["expr"]) + \
                    re.findall(r"\b(ringmesh_[a-z0-9_]+)\b", r["expr"]):
                if ":" in m:
                    continue  # a recording rule of this file
                assert m in known, f"{r.get('alert') or r.get('record')}: {m} is not exported"
