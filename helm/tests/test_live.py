"""Every dashboard panel returns data from a real Prometheus scraping a real
farm under sipp load; the alert rules evaluate on that data without error;
and each dashboard is drawn from it as a PNG under docs/img/.

Needs the release binary (RINGMESH_BIN, default target/release/ringmesh),
sipp, etcd, prometheus, promtool and openssl: helm/tests/run.sh provides
them. RINGMESH_OPS_IMG names another directory for the PNGs.
"""

import os
import pathlib
import tempfile

import pytest

from conftest import REPO, data_panels, load_dashboards, substitute
from livefarm import Farm, log

BOARDS = load_dashboards()
IDS = [b["uid"] for _, b in BOARDS]
IMG = pathlib.Path(os.environ.get("RINGMESH_OPS_IMG", REPO / "docs" / "img"))


@pytest.fixture(scope="module")
def farm():
    binary = pathlib.Path(os.environ.get("RINGMESH_BIN", REPO / "target" / "release" / "ringmesh"))
    if not binary.exists():
        pytest.fail(f"{binary} missing: cargo build --release -p ringmesh (run.sh does)")
    keep = os.environ.get("RINGMESH_OPS_KEEP")
    work = pathlib.Path(tempfile.mkdtemp(prefix="ringmesh-live-"))
    f = Farm(binary, work)
    try:
        f.start()
        yield f
    finally:
        f.stop()
        log(f"logs and data in {work}" if keep else f"stopped; removing {work}")
        if not keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def test_load_reached_the_farm(farm):
    s = farm.stats
    assert s["register_sipp_exit"] == [0, 0, 0], s
    assert s["callee_reg_exit"] == 0 and s["uac_exit"] == 0, s
    ok = farm.query('sum(ringmesh_registrations_total{result="ok"})')["result"]
    assert ok and float(ok[0]["value"][1]) >= 2100, ok
    calls = farm.query("sum(ringmesh_call_setup_seconds_count)")["result"]
    assert calls and float(calls[0]["value"][1]) >= 200, calls
    overlay = farm.query('sum(ringmesh_sip_requests_total{transport="overlay", method="INVITE"})')["result"]
    assert overlay and float(overlay[0]["value"][1]) >= 200, "calls crossed an overlay link"
    before, after = s["control_plane_before"], s["control_plane_without_etcd"]
    assert before["enrollment"]["Enroll"] == "OK" and before["missing"] == 3, before
    assert after["enrollment"]["Enroll"] == "UNAVAILABLE" and after["get"][0] == 4, after


@pytest.mark.parametrize("uid", IDS)
def test_every_panel_returns_data(farm, uid):
    board = dict((b["uid"], b) for _, b in BOARDS)[uid]
    empty, errors, checked = [], [], 0
    for p in data_panels(board):
        for t in p["targets"]:
            expr = substitute(t["expr"])
            try:
                res = farm.query(expr)["result"]
            except Exception as e:  # a query Prometheus rejects
                errors.append(f"{p['title']} [{t['refId']}]: {e}")
                continue
            checked += 1
            if not res:
                empty.append(f"{p['title']} [{t['refId']}]: {expr}")
    log(f"{uid}: {checked} expressions answered, {len(empty)} empty, {len(errors)} errors")
    assert not errors, "\n".join(errors)
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_alert_rules_evaluate_on_live_data(farm):
    groups = farm.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 50
    bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not bad, bad
    recorded = farm.query("ringmesh:registration_errors:ratio_rate5m")["result"]
    assert recorded, "recording rules produce series from the farm's data"


def test_every_target_is_scraped(farm):
    active = farm.api("targets")["activeTargets"]
    jobs = {t["labels"]["job"] for t in active}
    assert {"ringmesh-supernode", "ringmesh-provisioning", "ringmesh-enrollment"} <= jobs
    assert all(t["health"] == "up" for t in active), [(t["scrapeUrl"], t["lastError"]) for t in active]


@pytest.mark.parametrize("uid", IDS)
def test_dashboard_png(farm, uid):
    from plot import render
    board = dict((b["uid"], b) for _, b in BOARDS)[uid]
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"dashboard-{uid}.png"
    start, end = farm.t_start - 2, farm.t_end
    # Grafana picks $__rate_interval from the step: about 10 s for a few minutes at a 1 s scrape.
    counts = render(board, farm, path, start, end,
                    {"$__rate_interval": "10s", "$__range": f"{int(end - start)}s"})
    assert path.stat().st_size > 20_000
    blank = [t for t, n in counts if n == 0]
    assert not blank, f"panels drawn without data: {blank}"
    log(f"wrote {path} ({len(counts)} panels)")
