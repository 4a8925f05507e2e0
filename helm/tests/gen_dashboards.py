#!/usr/bin/env python3
"""Generates the Grafana dashboards of helm/ringmesh/dashboards/*.json.

The JSON files are what the chart ships; this script is their source. Edit
the panels here, run `python3 helm/tests/gen_dashboards.py`, and commit both
(test_dashboards.py fails when the JSON and this script disagree).

Every query uses only metrics that services/*/src/metrics.rs export, and
filters on the template variables `namespace` and `node` with regular
expressions whose "All" value is `.*`, which also matches series without the
label (a Prometheus outside Kubernetes adds no `namespace`). Supernode
metrics carry the constant label `node`; control-plane metrics do not.
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "ringmesh" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
# Selectors: supernode series (namespace and node) and any series (namespace).
S = 'namespace=~"$namespace", node=~"$node"'
N = 'namespace=~"$namespace"'
RI = "$__rate_interval"

# SLO targets (alerts/ringmesh-rules.yaml uses the same).
REG_SLO = 0.999
SIP_SLO = 0.999
LAT_SLO = 0.99


def rate(metric, sel=S, extra="", window=RI):
    inner = sel + (", " + extra if extra else "")
    return f"rate({metric}{{{inner}}}[{window}])"


def quantile(q, metric, by="", sel=S, extra="", window=RI):
    by_clause = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({by_clause}) ({rate(metric + '_bucket', sel, extra, window)}))"


class Board:
    def __init__(self, uid, title, description, node_var=True):
        self.uid, self.title, self.description = uid, title, description
        self.node_var = node_var
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title):
        self._newline()
        self.panels.append({
            "id": self._id(), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def _newline(self):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        if self.x >= 24:
            self._newline()
        return pos

    def panel(self, kind, title, targets, unit="short", description="", w=12, h=8,
              thresholds=None, decimals=None, stack=False, min_=None, max_=None):
        steps = thresholds or [{"color": "green", "value": None}]
        defaults = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                    "color": {"mode": "thresholds" if kind == "stat" else "palette-classic"}}
        if decimals is not None:
            defaults["decimals"] = decimals
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        p = {
            "id": self._id(),
            "type": {"ts": "timeseries", "stat": "stat"}[kind],
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                 "legendFormat": legend, "range": True, "instant": False}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": []},
        }
        if kind == "ts":
            defaults["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
                "showPoints": "never", "spanNulls": True,
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                "thresholdsStyle": {"mode": "line" if thresholds else "off"},
            }
            p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        else:
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                            "orientation": "auto", "textMode": "auto"}
        self.panels.append(p)
        return p

    def ts(self, title, targets, **kw):
        return self.panel("ts", title, targets, **kw)

    def stat(self, title, targets, **kw):
        kw.setdefault("w", 4)
        kw.setdefault("h", 5)
        return self.panel("stat", title, targets, **kw)

    def json(self):
        variables = [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"type": "query", "name": "namespace", "label": "Namespace", "datasource": DS,
             "definition": "label_values(ringmesh_up, namespace)",
             "query": {"query": "label_values(ringmesh_up, namespace)", "refId": "namespace"},
             "includeAll": True, "allValue": ".*", "multi": True,
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []},
            {"type": "query", "name": "node", "label": "Supernode", "datasource": DS,
             "definition": 'label_values(ringmesh_up{namespace=~"$namespace"}, node)',
             "query": {"query": 'label_values(ringmesh_up{namespace=~"$namespace"}, node)', "refId": "node"},
             "includeAll": True, "allValue": ".*", "multi": True,
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0 if self.node_var else 2, "regex": "", "options": []},
        ]
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["ringmesh"],
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "id": None,
            "links": [{"title": "Ringmesh", "type": "dashboards", "tags": ["ringmesh"], "asDropdown": True,
                       "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            "templating": {"list": variables},
            "panels": self.panels,
        }


# Label matchers used inside f-strings (Python 3.11 allows no backslash there).
FAILED = 'result="failed"'
DECIDED = 'result=~"ok|rejected|failed"'
C5XX_LEAF = 'class="5xx", transport!="overlay"'
CFINAL_LEAF = 'class=~"[2-6]xx", transport!="overlay"'
LE05 = 'le="0.5"'
LE1 = 'le="1"'
LEAVES = 'transport!="overlay"'


def slo_steps(target):
    return [{"color": "red", "value": None}, {"color": "green", "value": target}]


def max_steps(limit):
    return [{"color": "green", "value": None}, {"color": "red", "value": limit}]


REG_ERR = (f"sum({rate('ringmesh_registrations_total', extra=FAILED)})"
           f" / sum({rate('ringmesh_registrations_total', extra=DECIDED)})")
SIP_ERR = (f"sum({rate('ringmesh_sip_responses_sent_total', extra=C5XX_LEAF)})"
           f" / sum({rate('ringmesh_sip_responses_sent_total', extra=CFINAL_LEAF)})")
REG_SLOW = (f"1 - sum({rate('ringmesh_register_seconds_bucket', extra=LE05)})"
            f" / sum({rate('ringmesh_register_seconds_count')})")
CALL_ERR = (f"sum({rate('ringmesh_call_setups_total', extra=FAILED)})"
            f" / sum({rate('ringmesh_call_setups_total')})")
CALL_SLOW = (f"1 - sum({rate('ringmesh_call_setup_seconds_bucket', extra=LE1)})"
             f" / sum({rate('ringmesh_call_setup_seconds_count')})")


def overview():
    b = Board("ringmesh-overview", "Ringmesh / Farm overview",
              "The farm at a glance: SLOs and their error budgets, supernodes, the ring, traffic.")
    b.row("Service level objectives")
    b.stat("Registration success (range)", [(
        f"sum(increase(ringmesh_registrations_total{{{S}, result=\"ok\"}}[$__range]))"
        f" / sum(increase(ringmesh_registrations_total{{{S}, result=~\"ok|rejected|failed\"}}[$__range]))", "success")],
        unit="percentunit", decimals=3, thresholds=slo_steps(REG_SLO),
        description="REGISTERs answered 200 among those that reached a decision (200, 4xx rejection, 5xx failure); "
                    "401 challenges are protocol steps. SLO: 99.9% not failed.")
    b.stat("SIP success to leaves (range)", [(
        f"1 - sum(increase(ringmesh_sip_responses_sent_total{{{S}, class=\"5xx\", transport!=\"overlay\"}}[$__range]))"
        f" / sum(increase(ringmesh_sip_responses_sent_total{{{S}, class=~\"[2-6]xx\", transport!=\"overlay\"}}[$__range]))",
        "success")],
        unit="percentunit", decimals=3, thresholds=slo_steps(SIP_SLO),
        description="Final responses to leaves that are not 5xx, every method. SLO: 99.9%.")
    b.stat("Call setup success (range)", [(
        f"1 - sum(increase(ringmesh_call_setups_total{{{S}, result=\"failed\"}}[$__range]))"
        f" / sum(increase(ringmesh_call_setups_total{{{S}}}[$__range]))", "success")],
        unit="percentunit", decimals=3, thresholds=slo_steps(SIP_SLO),
        description="Leaves' INVITEs that did not fail (408 or 5xx), counted once at the caller's edge; busy, "
                    "cancelled and rejected calls are outcomes, not failures. SLO: 99.9%.")
    b.stat("Call setup p99 (range)", [(quantile(0.99, "ringmesh_call_setup_seconds", window="$__range"), "p99")],
           unit="s", thresholds=max_steps(1.0),
           description="INVITE received to first final response sent upstream, 99th percentile. SLO: 99% within 1 s.")
    b.stat("REGISTER p99 (range)", [(quantile(0.99, "ringmesh_register_seconds", window="$__range"), "p99")],
           unit="s", thresholds=max_steps(0.5),
           description="REGISTER received to final response (after the write quorum), 99th percentile. SLO: 99% within 0.5 s.")
    b.stat("Registration error budget left (30 d)", [(
        f"1 - (sum(increase(ringmesh_registrations_total{{{S}, result=\"failed\"}}[30d]))"
        f" / sum(increase(ringmesh_registrations_total{{{S}, result=~\"ok|rejected|failed\"}}[30d]))) / {1 - REG_SLO:g}",
        "budget left")],
        unit="percentunit", decimals=1, thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0},
                                                    {"color": "green", "value": 0.25}],
        description="Share of the 30-day error budget (0.1% of decided REGISTERs) not spent yet; negative: the SLO is missed.")
    b.stat("Call setup latency budget left (30 d)", [(
        f"1 - (1 - sum(increase(ringmesh_call_setup_seconds_bucket{{{S}, le=\"1\"}}[30d]))"
        f" / sum(increase(ringmesh_call_setup_seconds_count{{{S}}}[30d]))) / {1 - LAT_SLO:g}", "budget left")],
        unit="percentunit", decimals=1, thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0},
                                                    {"color": "green", "value": 0.25}],
        description="Share of the 30-day budget (1% of call setups over 1 s) not spent yet.")
    b.ts("Error budget burn rate", [
        (f"({REG_ERR}) / {1 - REG_SLO:g}", "registration availability"),
        (f"({SIP_ERR}) / {1 - SIP_SLO:g}", "SIP availability"),
        (f"({CALL_ERR}) / {1 - SIP_SLO:g}", "call setup availability"),
        (f"({REG_SLOW}) / {1 - LAT_SLO:g}", "registration latency"),
        (f"({CALL_SLOW}) / {1 - LAT_SLO:g}", "call setup latency"),
    ], unit="short", w=12, h=9,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 6}, {"color": "red", "value": 14.4}],
        description="Error ratio divided by the budget ratio: 1 spends the budget in exactly 30 days; the page fires "
                    "above 14.4 (1 h) or 6 (6 h), a ticket above 3 (1 d) or 1 (3 d).")
    b.ts("Success ratios vs targets", [
        (f"1 - ({REG_ERR})", "registration success"),
        (f"1 - ({SIP_ERR})", "SIP success to leaves"),
        (f"1 - ({CALL_ERR})", "call setup success"),
        (f"1 - ({CALL_SLOW})", "call setups within 1 s"),
        (f"1 - ({REG_SLOW})", "REGISTERs within 0.5 s"),
    ], unit="percentunit", w=12, h=9, max_=1,
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": LAT_SLO}],
        description="Ratios over the rate interval; the line is the 99% latency target (availability targets are 99.9%).")
    b.ts("Call setup latency vs target", [
        (quantile(0.5, "ringmesh_call_setup_seconds"), "p50"),
        (quantile(0.9, "ringmesh_call_setup_seconds"), "p90"),
        (quantile(0.99, "ringmesh_call_setup_seconds"), "p99"),
    ], unit="s", w=12, thresholds=max_steps(1.0),
        description="INVITE to first final response; the line is the 1 s target of the 99th percentile.")
    b.ts("REGISTER latency vs target", [
        (quantile(0.5, "ringmesh_register_seconds"), "p50"),
        (quantile(0.9, "ringmesh_register_seconds"), "p90"),
        (quantile(0.99, "ringmesh_register_seconds"), "p99"),
    ], unit="s", w=12, thresholds=max_steps(0.5),
        description="REGISTER to final response; the line is the 0.5 s target of the 99th percentile.")
    b.row("Farm")
    b.stat("Supernodes up", [(f"sum(ringmesh_up{{{S}}})", "up")], w=4,
           description="Supernodes reporting ringmesh_up 1.")
    b.stat("Smallest ring view", [(f"min(ringmesh_overlay_ring_size{{{S}}})", "members")], w=4,
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 3}],
           description="Live members as seen by the supernode that sees the fewest; below 3 bindings lack replicas.")
    b.stat("Replicas below k", [(f"sum(ringmesh_overlay_replicas_below_k{{{S}}})", "below k")], w=4,
           thresholds=max_steps(1), description="Replicas not confirmed in sync at the last anti-entropy round, summed.")
    b.stat("Bindings", [(f"sum(ringmesh_location_bindings{{{S}, role=\"primary\"}})", "bindings")], w=4,
           description="Bindings held by their primary replica: the farm's registered contacts.")
    b.stat("Calls in progress", [(f"sum(ringmesh_sip_calls_active{{{S}}})", "calls")], w=4,
           description="INVITE transactions in progress through the farm.")
    b.stat("Overload rejections/s", [(f"sum({rate('ringmesh_overload_rejections_total')})", "503/s")], w=4,
           unit="reqps", thresholds=max_steps(0.001),
           description="Requests answered 503 + Retry-After because a SIP core queue was full.")
    b.ts("SIP requests by method", [(
        f"sum by (method) ({rate('ringmesh_sip_requests_total', extra=LEAVES)})", "{{method}}")],
        unit="reqps", stack=True, description="Requests received from leaves (UDP and TCP).")
    b.ts("Registrations by result", [(
        f"sum by (result) ({rate('ringmesh_registrations_total')})", "{{result}}")], unit="reqps",
        description="ok (200), challenged (401), rejected (4xx), failed (5xx: quorum, store or provisioning).")
    b.ts("Supernodes up and ring size", [
        (f"sum(ringmesh_up{{{S}}})", "supernodes up"),
        (f"min(ringmesh_overlay_ring_size{{{S}}})", "smallest ring view"),
        (f"max(ringmesh_overlay_ring_size{{{S}}})", "largest ring view"),
    ], description="Every supernode should see every supernode alive: the three lines coincide in a healthy farm.")
    b.ts("Overlay trouble", [
        (f"sum({rate('ringmesh_overlay_quorum_failures_total')})", "quorum failures/s"),
        (f"sum({rate('ringmesh_overload_rejections_total')})", "overload rejections/s"),
        (f"sum(ringmesh_overlay_replicas_below_k{{{S}}})", "replicas below k"),
    ], description="Each should stay at zero.")
    b.ts("Supernodes by release", [(
        f"count by (version, protocol) (ringmesh_build_info{{{S}}})", "{{version}} (protocol {{protocol}})")],
        stack=True, w=24, h=6,
        description="Supernodes running each release: two series while a rolling upgrade is under way; "
                    "two protocol versions for 2 hours fire RingmeshUpgradeStalled.")
    return b


def sip():
    b = Board("ringmesh-sip", "Ringmesh / SIP traffic",
              "Requests, responses, transactions, connections, registrations and latency, by method, class and transport.")
    b.row("Requests and responses")
    b.ts("Requests by method", [(
        f"sum by (method) ({rate('ringmesh_sip_requests_total')})", "{{method}}")], unit="reqps", stack=True,
        description="Every request received, over every transport (udp, tcp, tls, ws, wss; overlay: from other "
                    "supernodes).")
    b.ts("Requests by transport", [(
        f"sum by (transport) ({rate('ringmesh_sip_requests_total')})", "{{transport}}")], unit="reqps", stack=True,
        description="overlay = requests relayed by another supernode over an overlay link.")
    b.ts("Responses sent by class", [(
        f"sum by (class) ({rate('ringmesh_sip_responses_sent_total')})", "{{class}}")], unit="reqps", stack=True,
        description="Responses this farm sent, by status class.")
    b.ts("Responses received by class", [(
        f"sum by (class) ({rate('ringmesh_sip_responses_received_total')})", "{{class}}")], unit="reqps", stack=True,
        description="Responses received from callees and other supernodes.")
    b.ts("Responses sent by class and transport", [(
        f"sum by (class, transport) ({rate('ringmesh_sip_responses_sent_total')})", "{{class}} {{transport}}")],
        unit="reqps", description="Where answers go: to leaves (udp, tcp, tls, ws, wss) or to other supernodes "
                                  "(overlay).")
    b.ts("Proxied requests by method", [(
        f"sum by (method) ({rate('ringmesh_proxy_forwarded_total')})", "{{method}}")], unit="reqps",
        description="Requests the proxy forwarded (to a leaf or over a link).")
    b.row("Errors and overload")
    b.ts("Parse errors by kind and transport", [(
        f"sum by (kind, transport) ({rate('ringmesh_sip_parse_errors_total')})", "{{kind}} {{transport}}")],
        unit="reqps", description="request: answered 400/413/505; response: dropped; stream: connection closed.")
    b.ts("Overload rejections by transport", [(
        f"sum by (transport) ({rate('ringmesh_overload_rejections_total')})", "{{transport}}")], unit="reqps",
        description="New requests answered 503 + Retry-After by overload control.")
    b.ts("Shed by signal", [(
        f"sum by (reason) ({rate('ringmesh_overload_shed_total')})", "{{reason}}")], unit="reqps",
        description="Which limit shed new requests: queue_delay, queue_depth, transactions, or pending (waiting for "
                    "the ring or the subscriber directory).")
    b.ts("Refused for an overloaded peer", [
        (f"sum by (node) ({rate('ringmesh_overload_peer_refusals_total')})", "{{node}} refused"),
        (f"max by (node) (ringmesh_overlay_peers_overloaded{{{S}}})", "{{node}} sees overloaded")],
        description="New calls a node answered 503 + Retry-After itself because the callee's supernode told the "
                    "farm it is overloaded (instead of sending them there), and how many members each node sees "
                    "overloaded now.")
    b.ts("Queueing delay", [(
        f"max by (node) (ringmesh_sip_inbound_queue_delay_microseconds{{{S}}})", "{{node}}")], unit="µs",
        description="Smoothed wait between a transport reader and the SIP core; overload control sheds above "
                    "overload-queue-delay-ms (20 ms by default).")
    b.ts("Authentication failures by reason", [(
        f"sum by (reason) ({rate('ringmesh_auth_failures_total')})", "{{reason}}")], unit="reqps",
        description="Digest failures: bad credentials, stale nonce, foreign nonce (another node's or a restart's: "
                    "the phone retries), replay (a (nonce, nc) already accepted), unknown user, barred, identity not "
                    "the user's own.")
    b.ts("Inbound queue", [(f"max by (node) (ringmesh_sip_inbound_queue{{{S}}})", "new {{node}}"),
                           (f"max by (node) (ringmesh_sip_finishing_queue{{{S}}})", "finishing {{node}}")],
         description="Messages waiting for each node's SIP core. New: requests and connection events; a queue "
                     "that stays full sheds load (503). Finishing: responses, ACKs and what other supernodes send; "
                     "served first and never shed.")
    b.row("Transactions, calls, connections")
    b.ts("Transactions", [(f"sum by (node) (ringmesh_sip_transactions{{{S}}})", "{{node}}")], stack=True,
         description="Live client and server transactions per supernode.")
    b.ts("Calls in progress", [(f"sum by (node) (ringmesh_sip_calls_active{{{S}}})", "{{node}}")], stack=True,
         description="INVITE transactions in progress through each supernode.")
    b.ts("Call setups by result", [(
        f"sum by (result) ({rate('ringmesh_call_setups_total')})", "{{result}}")], unit="reqps", stack=True,
        description="Leaves' INVITEs by outcome at the caller's edge: answered, busy (486, 600), cancelled (487), "
                    "rejected (other 3xx-6xx), failed (408, 5xx: what the call setup SLO counts).")
    b.ts("Connections by transport", [(
        f"sum by (transport) (ringmesh_sip_connections_open{{{S}}})", "{{transport}}")], stack=True,
        description="Open SIP connections (accepted and opened) by transport: tcp, tls, ws, wss.")
    b.ts("Registrations by result", [(
        f"sum by (result) ({rate('ringmesh_registrations_total')})", "{{result}}")], unit="reqps",
        description="ok (200), challenged (401), rejected (4xx), failed (5xx).")
    b.row("Flows and TLS")
    b.ts("Outbound flows", [(f"sum by (node) (ringmesh_sip_outbound_flows{{{S}}})", "{{node}}")], stack=True,
         description="Flows (UDP, TCP, TLS, WebSocket) that carry RFC 5626 outbound registrations, per edge.")
    b.ts("Failed outbound flows by reason", [(
        f"sum by (reason) ({rate('ringmesh_sip_outbound_flows_failed_total')})", "{{reason}}")], unit="ops",
        description="closed: the connection closed; silent: nothing heard for the Flow-Timer and its margin. "
                    "Their bindings are removed at once.")
    b.ts("Handshake failures by transport and stage", [(
        f"sum by (transport, stage) ({rate('ringmesh_sip_handshake_failures_total')})",
        "{{transport}} {{stage}}")], unit="ops",
        description="TLS handshakes (bad or no certificate, plaintext on a TLS port, timeouts) and WebSocket "
                    "upgrades (no sip subprotocol, origin not allowed) that failed.")
    b.stat("TLS certificate expires in", [(
        f"min(ringmesh_sip_tls_certificate_expiry_timestamp_seconds{{{S}}} > 0) - time()", "left")], unit="s",
        thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 7 * 86400},
                    {"color": "green", "value": 21 * 86400}],
        description="Time left on the first SIP TLS certificate to expire (cert-manager renews it; nodes reload "
                    "it within 5 s).")
    b.row("Latency and location")
    b.ts("Call setup latency", [
        (quantile(0.5, "ringmesh_call_setup_seconds"), "p50"),
        (quantile(0.9, "ringmesh_call_setup_seconds"), "p90"),
        (quantile(0.99, "ringmesh_call_setup_seconds"), "p99"),
    ], unit="s", thresholds=max_steps(1.0), description="INVITE received to first final response sent upstream.")
    b.ts("REGISTER latency", [
        (quantile(0.5, "ringmesh_register_seconds"), "p50"),
        (quantile(0.9, "ringmesh_register_seconds"), "p90"),
        (quantile(0.99, "ringmesh_register_seconds"), "p99"),
    ], unit="s", thresholds=max_steps(0.5), description="REGISTER received to final response sent.")
    b.ts("Bindings by replica role", [(
        f"sum by (role) (ringmesh_location_bindings{{{S}}})", "{{role}}")],
        description="primary: bindings whose key this node owns; replica: copies held for other owners.")
    b.ts("Addresses-of-record held", [(f"sum by (node) (ringmesh_location_aors{{{S}}})", "{{node}}")], stack=True,
         description="AORs with at least one binding held on each node (primary or replica).")
    b.ts("Subscriptions (reg event) by event", [(
        f"sum by (event) ({rate('ringmesh_sip_subscription_events_total')})", "{{event}}")], unit="ops",
        description="accepted and refreshed: SUBSCRIBEs taken here; notified: NOTIFYs sent as a key's notifier; "
                    "ended: ran out or un-SUBSCRIBEd; watcher_gone: dropped after a 481 or no answer to a NOTIFY.")
    b.ts("Application servers by event", [(
        f"sum by (event) ({rate('ringmesh_sip_app_server_events_total')})", "{{event}}")], unit="ops",
        description="Initial requests through application servers (initial filter criteria): triggered: sent to a "
                    "server; returned: sent back to continue; failed_continued / failed_terminated: the server did not "
                    "answer in service-timeout-ms (or answered 408/5xx first) and the request went on without it, or "
                    "was failed.")
    b.ts("Call records", [
        (f"sum by (record) ({rate('ringmesh_cdr_records_total')})", "{{record}}"),
        (f"sum ({rate('ringmesh_cdr_write_errors_total')})", "write errors"),
        (f"sum (ringmesh_cdr_calls_up{{{S}}})", "calls up (open records)"),
    ], unit="ops",
        description="Call records made durable by the originating edges: interim (a call answered), final (an "
                    "attempt over); write errors lose the records of a commit; calls up is a count, not a rate.")
    b.ts("Messages for offline subscribers", [(
        f"sum by (event) ({rate('ringmesh_sip_offline_messages_total')})", "{{event}}")], unit="ops",
        description="MESSAGEs for subscribers with no reachable device: stored (kept on the AOR's replicas, 202); "
                    "full (the mailbox was at offline-messages, 480); discarded (for no subscriber or a barred one: "
                    "202 and dropped); delivered (a device that registered took one); deferred (it did not take it "
                    "now: kept for its next REGISTER); refused_by_device (refused for good: dropped).")
    b.row("Numbers: ENUM and PSTN gateways")
    b.ts("ENUM lookups by result", [(
        f"sum by (result) ({rate('ringmesh_sip_enum_lookups_total')})", "{{result}}")], unit="ops",
        description="Calls to numbers no subscriber owns, looked up in ENUM: local (a URI of this farm), direct (a "
                    "URI naming an address), foreign (another domain: to its servers, found by RFC 3263), none (no "
                    "SIP record: to the gateways), failed (DNS did not answer within 2 s: to the gateways).")
    b.ts("Gateways up, as each node sees them", [(
        f"min by (node, gateway) (ringmesh_sip_gateway_up{{{S}}})", "{{gateway}} {{node}}")],
        description="1: the gateway answers this node's OPTIONS probes (every 500 ms); 0: it left one unanswered "
                    "for 1.5 s and no call from this node goes to it until it answers again.")
    b.ts("Gateway calls by gateway and event", [(
        f"sum by (gateway, event) ({rate('ringmesh_sip_gateway_events_total')})", "{{gateway}} {{event}}")],
        unit="ops",
        description="sent: calls sent to the gateway; answered: 2xx; refused: 4xx/6xx passed to the caller; "
                    "failed_over: 408, 5xx, no answer within gateway-timeout-ms or a transport error, the call moved "
                    "to the next gateway; down / up: probe state changes.")
    b.ts("Calls up at each gateway", [(
        f"sum by (gateway) (ringmesh_sip_gateway_active_calls{{{S}}})", "{{gateway}}")],
        description="Calls being set up or answered at each gateway, over the selected nodes (the capacity cap is "
                    "per node).")
    b.ts("Requests to other domains' servers (RFC 3263) by peer and event", [(
        f"sum by (peer, event) ({rate('ringmesh_sip_located_calls_total')})", "{{peer}} {{event}}")], unit="ops",
        description="Requests to other domains' servers, found by RFC 3263: per peer farm (its name), and other for "
                    "the URI an ENUM record names. sent to a server; answered (2xx); refused (a final answer other "
                    "than 408 and 503, passed to the caller); failed_over (408, 503, no answer within "
                    "gateway-timeout-ms, a refused connection or TLS handshake: the next server); exhausted (no "
                    "server left or reachable: an ENUM call goes to the gateways, a peer's request gets 503).")
    return b


def overlay():
    b = Board("ringmesh-overlay", "Ringmesh / Overlay health",
              "The ring: members, links and their RTT, lookups, quorum writes, replicas, repairs and anti-entropy.")
    b.row("Membership and links")
    b.ts("Ring size as each node sees it", [(f"max by (node) (ringmesh_overlay_ring_size{{{S}}})", "{{node}}")],
         thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 3}],
         description="Members alive in each node's view; all lines equal in a healthy farm.")
    b.ts("Members by state", [(f"max by (state) (ringmesh_overlay_members{{{S}}})", "{{state}}")],
         description="Farm members by state in the views of the selected nodes (largest view).")
    b.ts("Overlay links", [(f"sum by (node) (ringmesh_overlay_links{{{S}}})", "{{node}}")],
         description="Open QUIC connections to other supernodes.")
    b.ts("Link RTT", [
        (quantile(0.5, "ringmesh_overlay_link_rtt_seconds"), "p50"),
        (quantile(0.99, "ringmesh_overlay_link_rtt_seconds"), "p99"),
        (quantile(0.99, "ringmesh_overlay_link_rtt_seconds", by="node"), "p99 {{node}}"),
    ], unit="s", description="QUIC round-trip time of overlay links, sampled each second.")
    b.ts("Link refusals and malformed messages", [
        (f"sum by (reason) ({rate('ringmesh_overlay_link_refusals_total')})", "refused: {{reason}}"),
        (f"sum({rate('ringmesh_overlay_malformed_messages_total')})", "malformed messages"),
        (f"sum by (reason) ({rate('ringmesh_overlay_refused_total')})", "writes refused: {{reason}}"),
    ], unit="ops", description="Refused links by reason (tls, identity, version, other), undecodable messages, "
                               "and writes refused by reason (member_record, not_replica, entry).")
    b.ts("Failures detected and stale-view forwards", [
        (f"sum by (node) ({rate('ringmesh_overlay_failures_detected_total')})", "dead declared by {{node}}"),
        (f"sum({rate('ringmesh_overlay_forwarded_total')})", "forwarded (stale view)"),
    ], unit="ops", description="Neighbours declared dead; operations forwarded because a sender's view was stale.")
    b.row("Lookups and writes")
    b.ts("Lookup hops", [
        (f"sum({rate('ringmesh_overlay_lookup_hops_sum')}) / sum({rate('ringmesh_overlay_lookup_hops_count')})", "mean"),
        (quantile(0.99, "ringmesh_overlay_lookup_hops"), "p99"),
    ], description="Overlay hops of reads and writes started here: 1 in steady state (full member view).")
    b.ts("Overlay operation latency", [
        (quantile(0.5, "ringmesh_overlay_operation_seconds", by="op"), "p50 {{op}}"),
        (quantile(0.99, "ringmesh_overlay_operation_seconds", by="op"), "p99 {{op}}"),
    ], unit="s", description="Reads (get) and quorum writes (put) started here.")
    b.ts("Writes by result", [(
        f"sum by (result) ({rate('ringmesh_overlay_writes_total')})", "{{result}}")], unit="ops", stack=True,
        description="Replicated writes started here; failed = no quorum before the deadline.")
    b.ts("Quorum failures", [(
        f"sum by (node) ({rate('ringmesh_overlay_quorum_failures_total')})", "{{node}}")], unit="ops",
        description="Writes that did not reach a majority of their replicas (the leaf got 503).")
    b.row("Replicas and repair")
    b.ts("Replicas below k", [(f"max by (node) (ringmesh_overlay_replicas_below_k{{{S}}})", "{{node}}")],
         thresholds=max_steps(1),
         description="Replicas of each node's range not confirmed in sync at the last anti-entropy round.")
    b.ts("Repaired records", [(
        f"sum by (node) ({rate('ringmesh_overlay_repaired_records_total')})", "{{node}}")], unit="ops",
        description="Records changed by hand-off (join, leave) or anti-entropy repair.")
    b.ts("Records held", [(f"max by (node) (ringmesh_overlay_records{{{S}}})", "{{node}}")],
         description="Records in each node's overlay store, one per address of record: a node "
                     "restarted with its data directory wiped refills from its replicas.")
    b.ts("Anti-entropy rounds", [(
        f"sum by (node) ({rate('ringmesh_overlay_anti_entropy_rounds_total')})", "{{node}}")], unit="ops",
        description="Anti-entropy rounds run by each node.")
    b.ts("Bindings by replica role", [(
        f"sum by (role) (ringmesh_location_bindings{{{S}}})", "{{role}}")],
        description="replica / primary stays near k - 1 once the ring has at least k members.")
    return b


def node():
    b = Board("ringmesh-node", "Ringmesh / Supernode drill-down",
              "One supernode (or a few): pick them with the Supernode variable. Every series is per node.")
    b.row("State")
    b.stat("Up", [(f"sum(ringmesh_up{{{S}}})", "up")], description="ringmesh_up of the selected nodes.")
    b.stat("Ring size (min)", [(f"min(ringmesh_overlay_ring_size{{{S}}})", "members")],
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 3}])
    b.stat("Links", [(f"sum(ringmesh_overlay_links{{{S}}})", "links")])
    b.stat("Replicas below k", [(f"sum(ringmesh_overlay_replicas_below_k{{{S}}})", "below k")],
           thresholds=max_steps(1))
    b.stat("Connections", [(f"sum(ringmesh_sip_connections{{{S}}})", "connections")])
    b.stat("Transactions", [(f"sum(ringmesh_sip_transactions{{{S}}})", "transactions")])
    b.row("SIP")
    b.ts("Requests by node and transport", [(
        f"sum by (node, transport) ({rate('ringmesh_sip_requests_total')})", "{{node}} {{transport}}")],
        unit="reqps")
    b.ts("Responses sent by node and class", [(
        f"sum by (node, class) ({rate('ringmesh_sip_responses_sent_total')})", "{{node}} {{class}}")],
        unit="reqps")
    b.ts("Call setup p99 by node", [(quantile(0.99, "ringmesh_call_setup_seconds", by="node"), "{{node}}")],
         unit="s", thresholds=max_steps(1.0))
    b.ts("REGISTER p99 by node", [(quantile(0.99, "ringmesh_register_seconds", by="node"), "{{node}}")],
         unit="s", thresholds=max_steps(0.5))
    b.ts("Calls in progress and inbound queue", [
        (f"sum by (node) (ringmesh_sip_calls_active{{{S}}})", "calls {{node}}"),
        (f"sum by (node) (ringmesh_sip_inbound_queue{{{S}}})", "queue {{node}}"),
    ])
    b.ts("Overload, parse errors and auth failures", [
        (f"sum by (node) ({rate('ringmesh_overload_rejections_total')})", "overload {{node}}"),
        (f"sum by (node) ({rate('ringmesh_sip_parse_errors_total')})", "parse errors {{node}}"),
        (f"sum by (node) ({rate('ringmesh_auth_failures_total')})", "auth failures {{node}}"),
    ], unit="reqps")
    b.row("Overlay")
    b.ts("Bindings and AORs", [
        (f"sum by (node, role) (ringmesh_location_bindings{{{S}}})", "{{role}} {{node}}"),
        (f"sum by (node) (ringmesh_location_aors{{{S}}})", "AORs {{node}}"),
    ])
    b.ts("Overlay operation p99 by node", [(
        quantile(0.99, "ringmesh_overlay_operation_seconds", by="node, op"), "{{op}} {{node}}")], unit="s")
    b.ts("Link RTT p99 by node", [(quantile(0.99, "ringmesh_overlay_link_rtt_seconds", by="node"), "{{node}}")],
         unit="s")
    b.ts("Writes, repairs, anti-entropy", [
        (f"sum by (node, result) ({rate('ringmesh_overlay_writes_total')})", "writes {{result}} {{node}}"),
        (f"sum by (node) ({rate('ringmesh_overlay_repaired_records_total')})", "repaired {{node}}"),
        (f"sum by (node) ({rate('ringmesh_overlay_anti_entropy_rounds_total')})", "anti-entropy {{node}}"),
    ], unit="ops")
    b.ts("Members by state", [(f"sum by (node, state) (ringmesh_overlay_members{{{S}}})", "{{state}} {{node}}")])
    b.ts("Refusals, failures detected, forwards", [
        (f"sum by (node) ({rate('ringmesh_overlay_link_refusals_total')})", "refused {{node}}"),
        (f"sum by (node) ({rate('ringmesh_overlay_failures_detected_total')})", "dead declared {{node}}"),
        (f"sum by (node) ({rate('ringmesh_overlay_forwarded_total')})", "forwarded {{node}}"),
    ], unit="ops")
    return b


def control_plane():
    b = Board("ringmesh-control-plane", "Ringmesh / Control plane",
              "Provisioning and enrollment: RPCs by method and code, latency, Watch streams, store (etcd) errors, "
              "and what supernodes see of them.")
    b.row("Services")
    b.stat("Provisioning up", [(f"sum(up{{job=\"ringmesh-provisioning\", {N}}})", "up")], w=6,
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    b.stat("Enrollment up", [(f"sum(up{{job=\"ringmesh-enrollment\", {N}}})", "up")], w=6,
           thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    b.stat("Watch streams", [(f"sum(ringmesh_provisioning_watchers{{{N}}})", "watchers")], w=6,
           description="Open Watch streams: each supernode keeps one to invalidate its subscriber cache.")
    b.stat("Store unavailable (etcd) /s", [(
        f"sum(rate(ringmesh_provisioning_requests_total{{{N}, code=\"unavailable\"}}[{RI}]))", "provisioning")],
        unit="reqps", w=6, thresholds=max_steps(0.001),
        description="Provisioning RPCs answered UNAVAILABLE: the store (etcd) cannot be reached.")
    b.row("Provisioning")
    b.ts("Provisioning RPCs by method", [(
        f"sum by (rpc) (rate(ringmesh_provisioning_requests_total{{{N}}}[{RI}]))", "{{rpc}}")], unit="reqps",
        stack=True)
    b.ts("Provisioning RPCs by code", [(
        f"sum by (code) (rate(ringmesh_provisioning_requests_total{{{N}}}[{RI}]))", "{{code}}")], unit="reqps",
        stack=True, description="unavailable = the store (etcd) is unreachable; not_found is a normal answer.")
    b.ts("Provisioning latency p99 by method", [(
        f"histogram_quantile(0.99, sum by (le, rpc) (rate(ringmesh_provisioning_request_duration_seconds_bucket{{{N}}}[{RI}])))",
        "{{rpc}}")], unit="s")
    b.ts("Provisioning errors by method and code", [(
        f"sum by (rpc, code) (rate(ringmesh_provisioning_requests_total{{{N}, code!=\"ok\"}}[{RI}]))",
        "{{rpc}} {{code}}")], unit="reqps",
        description="Every answer other than OK, by method.")
    b.row("Enrollment")
    b.ts("Enrollment RPCs by method", [(
        f"sum by (rpc) (rate(ringmesh_enrollment_requests_total{{{N}}}[{RI}]))", "{{rpc}}")], unit="reqps",
        stack=True)
    b.ts("Enrollment RPCs by code", [(
        f"sum by (code) (rate(ringmesh_enrollment_requests_total{{{N}}}[{RI}]))", "{{code}}")], unit="reqps",
        stack=True, description="permission_denied = bad bootstrap or admin token; unavailable = store (etcd) down.")
    b.ts("Enrollment latency p99 by method", [(
        f"histogram_quantile(0.99, sum by (le, rpc) (rate(ringmesh_enrollment_request_duration_seconds_bucket{{{N}}}[{RI}])))",
        "{{rpc}}")], unit="s")
    b.ts("Store (etcd) errors", [
        (f"sum by (rpc) (rate(ringmesh_provisioning_requests_total{{{N}, code=\"unavailable\"}}[{RI}]))",
         "provisioning {{rpc}}"),
        (f"sum by (rpc) (rate(ringmesh_enrollment_requests_total{{{N}, code=\"unavailable\"}}[{RI}]))",
         "enrollment {{rpc}}"),
    ], unit="reqps", description="RPCs answered UNAVAILABLE because etcd cannot be reached or timed out.")
    b.row("Seen from the supernodes")
    b.ts("Authentication failures by reason", [(
        f"sum by (reason) ({rate('ringmesh_auth_failures_total')})", "{{reason}}")], unit="reqps",
        description="unknown_user comes from provisioning's answers; a burst can mean a wrong realm or a bad import.")
    b.ts("Registrations failed (5xx)", [(
        f"sum by (node) ({rate('ringmesh_registrations_total', extra=FAILED)})", "{{node}}")],
        unit="reqps",
        description="REGISTERs answered 5xx: a write quorum missed, or provisioning unreachable for a subscriber "
                    "not in the cache.")
    b.ts("Subscriber cache lookups", [
        (f"sum by (node) ({rate('ringmesh_subscriber_cache_hits_total')})", "{{node}} hits"),
        (f"sum by (node) ({rate('ringmesh_subscriber_cache_misses_total')})", "{{node}} misses"),
        (f"sum by (node) ({rate('ringmesh_subscriber_cache_errors_total')})", "{{node}} errors"),
    ], unit="reqps",
        description="Each supernode's subscriber cache: hits, misses (asked provisioning) and errors (provisioning "
                    "unreachable for a subscriber not in the cache: that REGISTER or INVITE got 503).")
    b.ts("Subscriber cache invalidations (Watch) up", [(
        f"min by (node) (ringmesh_subscriber_cache_watch_connected{{{S}}})", "{{node}}")],
        description="1 while a supernode's Watch stream to provisioning is up; 0 on a node with a cache means "
                    "password changes and barring no longer reach it (RingmeshSubscriberCacheStale). Nodes "
                    "with --auth none have no cache and show 0.")
    return b


BOARDS = [overview, sip, overlay, node, control_plane]


def render():
    return {f"{b.uid}.json": json.dumps(b.json(), indent=2) + "\n" for b in (f() for f in BOARDS)}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    files = render()
    check = "--check" in sys.argv
    stale = []
    for name, text in files.items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    for path in OUT.glob("*.json"):
        if path.name not in files:
            stale.append(path.name + " (not generated)")
    if stale:
        print("dashboards differ from helm/tests/gen_dashboards.py: " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
