#!/usr/bin/env python3
"""charts.py - draw modbroker's benchmark charts as plain SVG (no libraries, no downloads).

Usage:
  tools/charts.py burst    BURST.csv    OUT.svg
  tools/charts.py coldplug COLDPLUG.csv OUT.svg

burst: the CSV written by tests/vm/bench.sh (build/vm/bench/burst.csv), columns
  n,mode,secs,first_secs,median_secs,daemon_max_secs,init_attempts,finit_calls,outcomes
  with mode "direct" or "broker". Chart: time until every caller answered vs N
  (log-scale N), one line per mode, the single load (direct, N=1) as a dashed line,
  init attempts written next to each point.

coldplug: columns
  vcpus,mode,finit_calls,settle_secs
  one row per (vCPU count, mode); mode is a free label, e.g. "builtin" (udev's own
  kmod calls) or "broker". Lines starting with '#' are ignored. Chart: two panels,
  finit_module calls vs vCPUs and settle time vs vCPUs, one line per mode.
"""

import csv
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
# The broker is always blue, the thing it is compared with always red.
FIXED = {"broker": "#1f77b4", "direct": "#d62728", "builtin": "#d62728"}


def color_for(mode, i):
    base = mode.split(" ")[0]
    if base in FIXED and mode != base:
        # "broker (6.12)": a lighter shade of the mode's colour for the second kernel.
        shade = {"broker": "#8fbfe0", "builtin": "#f0a0a0"} if "6.12" in mode else {}
        return shade.get(base, FIXED[base])
    return FIXED.get(mode, COLORS[(i + 2) % len(COLORS)])
FONT = 'font-family="sans-serif"'


def read_rows(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    return list(csv.DictReader(lines))


def nice_ticks(hi, count=5):
    """Round tick values from 0 to at least hi."""
    if hi <= 0:
        return [0, 1]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, t = [], 0.0
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def fmt(v):
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.2g}"


class Panel:
    """One x/y plot area inside an SVG; x is either linear or log2."""

    def __init__(self, x0, y0, w, h, xs, ymax, xlog, title, xlabel, ylabel):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.xlog = xlog
        self.xs = sorted(set(xs))
        self.yticks = nice_ticks(ymax)
        self.ymax = self.yticks[-1]
        tx = [self.tx(x) for x in self.xs]
        self.xlo, self.xhi = min(tx), max(tx)
        if self.xhi == self.xlo:
            self.xhi = self.xlo + 1
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def tx(self, x):
        return math.log2(x) if self.xlog else x

    def px(self, x):
        pad = 0.05 * self.w
        return self.x0 + pad + (self.tx(x) - self.xlo) / (self.xhi - self.xlo) * (self.w - 2 * pad)

    def py(self, y):
        return self.y0 + self.h - y / self.ymax * self.h

    def axes(self):
        out = []
        x0, y0, w, h = self.x0, self.y0, self.w, self.h
        out.append(f'<text x="{x0 + w / 2}" y="{y0 - 12}" text-anchor="middle" font-size="15" {FONT}>{escape(self.title)}</text>')
        for t in self.yticks:
            y = self.py(t)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" {FONT}>{fmt(t)}</text>')
        for x in self.xs:
            px = self.px(x)
            out.append(f'<line x1="{px:.1f}" y1="{y0 + h}" x2="{px:.1f}" y2="{y0 + h + 5}" stroke="#333"/>')
            out.append(f'<text x="{px:.1f}" y="{y0 + h + 18}" text-anchor="middle" font-size="11" {FONT}>{fmt(x)}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
        out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 38}" text-anchor="middle" font-size="12" {FONT}>{escape(self.xlabel)}</text>')
        out.append(f'<text x="{x0 - 45}" y="{y0 + h / 2}" text-anchor="middle" font-size="12" {FONT} transform="rotate(-90 {x0 - 45} {y0 + h / 2})">{escape(self.ylabel)}</text>')
        return out

    def series(self, points, color, labels=None):
        """points: [(x, y)] sorted by x; labels: optional text per point."""
        out = []
        path = " ".join(f"{'M' if i == 0 else 'L'}{self.px(x):.1f},{self.py(y):.1f}" for i, (x, y) in enumerate(points))
        out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for i, (x, y) in enumerate(points):
            out.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="4" fill="{color}"/>')
            if labels and labels[i]:
                out.append(f'<text x="{self.px(x) + 7:.1f}" y="{self.py(y) - 7:.1f}" font-size="10" fill="{color}" {FONT}>{escape(labels[i])}</text>')
        return out

    def hline(self, y, color, text):
        py = self.py(y)
        return [
            f'<line x1="{self.x0}" y1="{py:.1f}" x2="{self.x0 + self.w}" y2="{py:.1f}" stroke="{color}" stroke-dasharray="6 4"/>',
            f'<text x="{self.x0 + self.w - 6}" y="{py + 14:.1f}" text-anchor="end" font-size="10" fill="{color}" {FONT}>{escape(text)}</text>',
        ]


def legend(x, y, entries):
    out = []
    for i, (label, color) in enumerate(entries):
        yy = y + i * 18
        out.append(f'<line x1="{x}" y1="{yy}" x2="{x + 22}" y2="{yy}" stroke="{color}" stroke-width="2.5"/>')
        out.append(f'<text x="{x + 28}" y="{yy + 4}" font-size="12" {FONT}>{escape(label)}</text>')
    return out


def svg(width, height, body):
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def burst_chart(rows):
    modes = {}
    for r in rows:
        modes.setdefault(r["mode"], []).append(r)
    allx = [int(r["n"]) for r in rows]
    ymax = max(float(r["secs"]) for r in rows) * 1.1
    p = Panel(80, 50, 560, 330, allx, ymax, True,
              "N concurrent loads of a module whose init fails (mb_fail, 300 ms)",
              "N concurrent callers (log scale)", "seconds until every caller answered")
    body = p.axes()
    names = {"direct": "direct finit_module (N threads)", "broker": "modbrokerd (N connections)"}
    entries = []
    for i, mode in enumerate(sorted(modes, key=lambda m: (m != "direct", m))):
        color = color_for(mode, i)
        pts = sorted(modes[mode], key=lambda r: int(r["n"]))
        labels = [f'{r.get("init_attempts", "")} init' for r in pts]
        body += p.series([(int(r["n"]), float(r["secs"])) for r in pts], color, labels)
        entries.append((names.get(mode, mode), color))
    single = [float(r["secs"]) for r in rows if r["mode"] == "direct" and int(r["n"]) == 1]
    if single:
        body += p.hline(single[0], "#555", f"single load {single[0]:.2f} s")
    body += legend(100, 75, entries)
    return svg(680, 440, body)


def normalize_coldplug(rows):
    """Accepts tests/vm/bench-coldplug.sh's CSV (kernel,cpus,mode,settle_s,calls,...) as well as
    the minimal vcpus,mode,finit_calls,settle_secs form; one series per kernel and mode, load
    calls being finit_module + init_module (6.12's kmod uses init_module)."""
    if not rows or "cpus" not in rows[0]:
        return rows
    out = []
    for r in rows:
        if r.get("vm_result", "PASS") != "PASS" or not r.get("settle_s"):
            continue
        kernel = r["kernel"].split("-")[0].split("+")[0]
        kernel = ".".join(kernel.split(".")[:2])
        out.append({"vcpus": r["cpus"], "mode": f'{r["mode"]} ({kernel})',
                    "finit_calls": r["calls"], "settle_secs": r["settle_s"]})
    return out


def coldplug_chart(rows):
    rows = normalize_coldplug(rows)
    modes = {}
    for r in rows:
        modes.setdefault(r["mode"], []).append(r)
    allx = [int(r["vcpus"]) for r in rows]
    xlog = max(allx) / max(min(allx), 1) >= 8
    panels = [
        ("finit_calls", "module load calls during coldplug", "finit_module + init_module calls"),
        ("settle_secs", "udevadm settle time", "seconds"),
    ]
    body = []
    entries = []
    for j, (key, title, ylabel) in enumerate(panels):
        ymax = max(float(r[key]) for r in rows) * 1.1
        p = Panel(80 + j * 420, 50, 330, 300, allx, ymax, xlog, title,
                  "vCPUs" + (" (log scale)" if xlog else ""), ylabel)
        body += p.axes()
        for i, mode in enumerate(sorted(modes)):
            color = color_for(mode, i)
            pts = sorted(modes[mode], key=lambda r: int(r["vcpus"]))
            body += p.series([(int(r["vcpus"]), float(r[key])) for r in pts], color)
            if j == 0:
                entries.append((mode, color))
    body += legend(100, 75, entries)
    return svg(860, 410, body)


def main(argv):
    if len(argv) != 4 or argv[1] not in ("burst", "coldplug"):
        sys.stderr.write(__doc__)
        return 2
    kind, src, dst = argv[1:]
    rows = read_rows(src)
    if not rows:
        sys.stderr.write(f"charts.py: no rows in {src}\n")
        return 1
    text = burst_chart(rows) if kind == "burst" else coldplug_chart(rows)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w") as f:
        f.write(text)
    print(f"charts.py: wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
