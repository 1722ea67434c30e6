"""Render the suite's figures as markdown tables, with targets and pass/fail."""

from __future__ import annotations

from typing import Any

from _common import Result
from _plan import IO_CONCURRENCY, IO_SLEEP, TARGETS, Row

IDEAL_IO = IO_CONCURRENCY / IO_SLEEP
#: Each row's target: at most this many times the cost of its floor (the bare SQL).
FLOOR_FACTOR = 1.5


def table(headers: list[str], body: list[list[str]]) -> str:
    """Return a padded markdown table (readable as plain text too)."""
    widths = [max(len(headers[i]), *(len(r[i]) for r in body)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in body)])


def _rate(fig: Result | None) -> float | None:
    if not fig or "error" in fig or "rate" not in fig:
        return None
    return float(fig["rate"])


def _fmt_rate(fig: Result | None, io: bool = False) -> str:
    if fig is None:
        return ""
    if "error" in fig:
        return "ERR"
    value = float(fig["rate"])
    mark = " (!)" if "warning" in fig else ""
    if fig.get("failed_runs"):
        mark += f" ({fig['failed_runs']} run failed)"
    if io:
        return f"{value:,.0f} ({value / IDEAL_IO:.0%}){mark}"
    return f"{value:,.0f}{mark}"


def _share(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return ""
    return f"{a / b:.0%}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return ""
    return f"{a / b:.2f}x"


def _target_cell(key: str, ours: float | None, huey: float | None) -> str:
    """The row's targets (file, NORMAL) with pass/fail, e.g. ">=20,000/s FAIL, >=1.1x ok"."""
    parts = []
    for target_key, _, minimum, ratio in TARGETS:
        if target_key != key:
            continue
        if minimum is not None:
            ok = ours is not None and ours >= minimum
            parts.append(f">={minimum:,.0f}/s {'ok' if ok else 'FAIL'}")
        if ratio is not None:
            ok = ours is not None and huey is not None and ours >= ratio * huey
            parts.append(f">={ratio:g}x Huey {'ok' if ok else 'FAIL'}")
    return ", ".join(parts)


def render(rows: list[Row], figures: dict[str, Result], info: dict[str, Any]) -> tuple[str, Any]:
    """Return the report text and the list of target verdicts."""
    fig = {id(row): {col: figures.get(spec.key) for col, spec in row.cells.items()} for row in rows}
    out: list[str] = []
    ours = next(
        (f for f in figures.values() if "driver" in f and "error" not in f),
        {},
    )
    huey = next((f for f in figures.values() if "huey_driver" in f), {})
    m = info["machine"]
    out.append(
        f"Workmatic on SQLite {ours.get('sqlite_version', '?')} ({ours.get('driver', '?')}), "
        f"Huey on SQLite {huey.get('huey_sqlite_version', '?')} ({huey.get('huey_driver', '?')}); "
        f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}; load at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_avg', []))}"
    )
    out.append(
        f'{info["jobs"]:,} jobs per Node-table row, payload {{"i": n, "email": '
        f'"user{{n}}@example.com"}}; jobs/s, median of {info["repeat"]} '
        f"(each figure from a fresh process); {info['date']}; `{info['command']}`"
    )
    out.append(
        "Durability: Workmatic NORMAL = WAL + synchronous=NORMAL (its default), FULL = "
        "durability='full'; Huey default = WAL + synchronous=FULL; floor = raw pysqlite3, "
        "WAL + NORMAL, same schema and statements."
    )
    verdicts: list[dict[str, Any]] = []

    for mode in ("file", "memory"):
        mode_rows = [r for r in rows if r.mode == mode and r.metric in ("rate", "io")]
        if not mode_rows:
            continue
        body: list[list[str]] = []
        for row in mode_rows:
            f = fig[id(row)]
            io = row.metric == "io"
            o = _rate(f.get("ours"))
            node = row.node
            node_cell = ""
            if node:
                mark = "" if o is None else (" ok" if o >= 2 * node else " FAIL")
                node_cell = f"{o / node:.1f}x{mark}" if o is not None else ""
            stall = f.get("ours") or {}
            floor = _rate(f.get("floor"))
            judged = bool(floor) and not io  # the row's floor target (the I/O row has none)
            within = o is not None and floor is not None and o * FLOOR_FACTOR >= floor
            share = _share(o, floor)
            cells = [
                row.title,
                _fmt_rate(f.get("ours"), io),
                _fmt_rate(f.get("floor")),
                share + " FAIL" if share and judged and not within else share,
            ]
            if mode == "file":
                cells += [
                    _fmt_rate(f.get("ours_full"), io),
                    _fmt_rate(f.get("huey"), io),
                    _fmt_rate(f.get("huey_normal"), io),
                    _ratio(o, _rate(f.get("huey_normal"))),
                    _ratio(_rate(f.get("ours_full")), _rate(f.get("huey"))),
                ]
            else:
                cells += [_fmt_rate(f.get("huey"), io), _ratio(o, _rate(f.get("huey")))]
            cells += [
                f"{node:,.0f}" if node else "",
                node_cell,
                f"{stall['stall_ms']:.1f}" if "stall_ms" in stall else "",
            ]
            if mode == "file":
                cells.append(_target_cell(row.key, o, _rate(f.get("huey_normal"))))
            body.append(cells)
            if judged:
                assert floor is not None
                verdicts.append(
                    {
                        "target": f"{mode}: {row.title} within {FLOOR_FACTOR:g}x the floor's cost"
                        f" (>= {floor / FLOOR_FACTOR:,.0f}/s)",
                        "measured": f"{o:,.0f}/s ({o / floor:.0%})" if o is not None else "ERR",
                        "pass": within,
                    }
                )
            if node and o is not None:
                verdicts.append(
                    {
                        "target": f"{mode}: {row.title} >= 2x Node ({2 * node:,.0f}/s)",
                        "measured": f"{o:,.0f}/s ({o / node:.1f}x)",
                        "pass": o >= 2 * node,
                    }
                )
        if mode == "file":
            headers = [
                "File DB (jobs/s)",
                "Workmatic NORMAL",
                "floor",
                "% of floor (target >= 67%)",
                "Workmatic FULL",
                "Huey FULL (default)",
                "Huey NORMAL",
                "x Huey NORMAL",
                "FULL x Huey FULL",
                "Node",
                "x Node (target 2x)",
                "max stall ms",
                "target (NORMAL)",
            ]
        else:
            headers = [
                ":memory: (jobs/s)",
                "Workmatic",
                "floor",
                "% of floor (target >= 67%)",
                "Huey",
                "x Huey",
                "Node",
                "x Node (target 2x)",
                "max stall ms",
            ]
        out.append("")
        out.append(table(headers, body))

    # Latency, large queue, RSS.
    lat = [r for r in rows if r.metric == "latency"]
    if lat:
        body = []
        for row in lat:
            f = fig[id(row)].get("ours") or {}
            if "error" in f:
                body.append([row.title, row.mode, "ERR", "ERR", "ERR", "ERR"])
                continue
            body.append(
                [
                    row.title,
                    row.mode,
                    f"{f.get('p50_ms', 0):.2f}",
                    f"{f.get('p99_ms', 0):.2f}",
                    f"{f.get('max_ms', 0):.2f}",
                    f"{f.get('jobs', 0):,.0f}",
                ]
            )
        out.append("")
        out.append(
            table(
                [
                    "Pickup latency, add() to handler start",
                    "db",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "samples",
                ],
                body,
            )
        )
    large = [r for r in rows if r.metric == "large"]
    if large:
        body = []
        for row in large:
            f = fig[id(row)].get("ours") or {}
            if "error" in f:
                body.append([row.title, "ERR", "", "", "", ""])
                continue
            body.append(
                [
                    row.title,
                    f"{f['rate']:,.0f}",
                    f"{f.get('rss_mb', 0):.0f}",
                    f"{f.get('peak_rss_mb', 0):.0f}",
                    f"{f.get('stall_ms', 0):.1f}",
                    f"{f.get('queued', 0):,.0f}",
                ]
            )
        out.append("")
        out.append(
            table(
                [
                    "Large queue (file, NORMAL)",
                    "jobs/s",
                    "worker RSS MiB",
                    "peak RSS MiB",
                    "max stall ms",
                    "ready left",
                ],
                body,
            )
        )
        rates = [_rate(fig[id(r)].get("ours")) for r in large]
        if len(rates) == 2:
            share = _share(rates[1], rates[0])
            if share:
                out.append(f"\nClaim throughput with the large queue: {share} of the small one.")

    # Stalls over every load run of ours.
    stalls = [
        (f["stall_ms"], row.title, row.mode)
        for row in rows
        for col, f in fig[id(row)].items()
        if col == "ours" and f and "stall_ms" in f and "error" not in f
    ]
    if stalls:
        worst = max(stalls)
        out.append(
            f"\nLargest gevent hub stall in any Workmatic run (1 ms heartbeat): "
            f"{worst[0]:.1f} ms ({worst[2]}: {worst[1]})."
        )

    warnings = sorted({str(f["warning"]) for f in figures.values() if "warning" in f})
    errors = sorted({str(f["error"]) for f in figures.values() if "error" in f})
    for label, items in (("(!) check failed after the run", warnings), ("ERR", errors)):
        if items:
            out.append(f"\n{label}: " + "; ".join(items[:5]))

    # Targets (file DB, WAL + NORMAL), against Huey at the same durability.
    by_key = {(r.key, r.mode): fig[id(r)] for r in rows}
    body = []
    for key, label, minimum, ratio in TARGETS:
        row_figs = by_key.get((key, "file"))
        if row_figs is None:
            continue
        o = _rate(row_figs.get("ours"))
        h = _rate(row_figs.get("huey_normal"))
        if minimum is not None:
            ok = o is not None and o >= minimum
            verdicts.append(
                {
                    "target": f"file: {label} >= {minimum:,.0f}/s",
                    "measured": f"{o:,.0f}/s" if o else "ERR",
                    "pass": ok,
                }
            )
        if ratio is not None:
            ok = o is not None and h is not None and o >= ratio * h
            verdicts.append(
                {
                    "target": f"file: {label} >= {ratio:.1f}x Huey NORMAL",
                    "measured": _ratio(o, h) or "ERR",
                    "pass": ok,
                }
            )
    # The explicit targets first, then the Node original's rows, then the floors.
    verdicts.sort(key=lambda v: 2 if "floor" in v["target"] else 1 if "Node" in v["target"] else 0)
    if verdicts:
        body = [[v["target"], v["measured"], "PASS" if v["pass"] else "FAIL"] for v in verdicts]
        passed = sum(v["pass"] for v in verdicts)
        out.append("")
        out.append(table([f"Target ({passed}/{len(verdicts)} pass)", "measured", "result"], body))
    return "\n".join(out), verdicts
