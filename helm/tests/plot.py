"""Draws a dashboard the way Grafana lays it out, from live Prometheus data:
every panel at its gridPos, time series as lines, stat panels as their last
value coloured by the panel's thresholds, rows as headings."""

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.patches  # noqa: E402,F401
import matplotlib.ticker  # noqa: E402,F401
import matplotlib.pyplot as plt  # noqa: E402
from datetime import datetime  # noqa: E402

from conftest import data_panels, substitute  # noqa: E402

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#d8d9da", "#2c3235"
COLOURS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2"}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62"]


def legend(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in metric.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip() or "value"


def fmt_value(v, unit):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "s":
        if abs(v) < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if abs(v) < 1:
            return f"{v * 1e3:.3g} ms"
        return f"{v:.3g} s"
    if unit in ("reqps", "ops"):
        return f"{v:.3g}/s"
    return f"{v:.4g}"


def threshold_colour(panel, v):
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    colour = steps[0]["color"]
    for s in steps[1:]:
        if v is not None and not math.isnan(v) and v >= s["value"]:
            colour = s["color"]
    return COLOURS.get(colour, colour)


def render(board, farm, path, start, end, overrides):
    """Writes board as a PNG at path; returns [(panel title, series drawn)]."""
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    W, unit_h, head = 24.0, 0.45, 0.9  # inches: figure width, one grid row, the title band
    Hin = rows * unit_h + head
    fig = plt.figure(figsize=(W, Hin), facecolor=BG)
    fig.text(0.15 / W, 1 - 0.3 / Hin, board["title"], color=TEXT, fontsize=20, weight="bold", va="top")
    fig.text(1 - 0.15 / W, 1 - 0.3 / Hin,
             f"live data: ringmesh dev (3 supernodes) + sipp, {datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S}"
             f" - {datetime.fromtimestamp(end):%H:%M:%S}", color="#8e8e8e", fontsize=12, ha="right", va="top")

    def inches(g):
        """Panel box (x, y from the bottom, w, h) in inches."""
        x = g["x"] / 24 * W
        w = g["w"] / 24 * W
        y = Hin - head - (g["y"] + g["h"]) * unit_h
        return x, y, w, g["h"] * unit_h

    def frac(x, y, w, h):
        return [x / W, y / Hin, w / W, h / Hin]

    counts = []
    step = max(1, int((end - start) / 200))
    for p in board["panels"]:
        g = p["gridPos"]
        x, y, w, h = inches(g)
        if p["type"] == "row":
            fig.text((x + 0.1) / W, (y + h / 2) / Hin, p["title"], color=TEXT, fontsize=15, weight="bold",
                     va="center")
            continue
        gap = 0.06
        x, y, w, h = x + gap, y + gap, w - 2 * gap, h - 2 * gap
        fig.patches.append(matplotlib.patches.Rectangle((x / W, y / Hin), w / W, h / Hin, transform=fig.transFigure,
                                                        facecolor=PANEL, edgecolor=GRID, lw=0.8, zorder=-10))
        fig.text((x + 0.1) / W, (y + h - 0.08) / Hin, p["title"], color=TEXT, fontsize=12, weight="bold", va="top")
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        n = 0
        if p["type"] == "stat":
            expr = substitute(p["targets"][0]["expr"], overrides)
            res = farm.query(expr, at=end)["result"]
            v = float(res[0]["value"][1]) if res else None
            n = len(res)
            ok = v is not None and not math.isnan(v)
            ax = fig.add_axes(frac(x + 0.1, y + 0.1, w - 0.2, h - 0.45))
            ax.set_facecolor(threshold_colour(p, v) if ok else PANEL)
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            ax.text(0.5, 0.5, fmt_value(v, unit), color="white", fontsize=28, weight="bold", ha="center",
                    va="center", transform=ax.transAxes)
        else:
            ax = fig.add_axes(frac(x + 0.85, y + 0.35, w - 1.0, h - 0.75), facecolor=PANEL)
            for sp in ax.spines.values():
                sp.set_color(GRID)
            ci = 0
            for t in p["targets"]:
                expr = substitute(t["expr"], overrides)
                res = farm.query_range(expr, start, end, step)["result"]
                for series in res:
                    xs = [datetime.fromtimestamp(float(ts)) for ts, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    ax.plot(xs, ys, lw=1.6, color=PALETTE[ci % len(PALETTE)],
                            label=legend(t.get("legendFormat"), series["metric"]))
                    ci += 1
                    n += 1
            for st in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]:
                ax.axhline(st["value"], color=COLOURS.get(st["color"], st["color"]), lw=0.9, ls="--", alpha=0.6)
            ax.tick_params(colors="#9fa3a8", labelsize=9)
            ax.grid(color=GRID, lw=0.5)
            ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _, u=unit: fmt_value(v, u)))
            if n:
                if n <= 12:
                    ax.legend(fontsize=8, loc="upper left", ncol=1 if n <= 4 else 2, framealpha=0.5,
                              facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT)
            else:
                ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        counts.append((p["title"], n))
    fig.savefig(path, dpi=64, facecolor=BG)
    plt.close(fig)
    return counts


__all__ = ["render", "data_panels"]
