"""Turn benchmark samples into summaries, tables, JSON, a chart and RESULTS.md.

A *sample* is one timed run of the load generator against one server: a
dict with ``workload``, ``cls`` (None for the reference servers, which have
no socketserver class), ``server``, ``conc``, ``rep`` and the measurements
(``rps``, ``requests``, ``errors``, ``p50_us``, ``p99_us``,
``cpu_us_per_req``, ``peak_rss_mib``).  Repetitions are summarized by their
median; the spread is half the min-max range, relative to the median.
Ratios compare medians with the stdlib's, from the same run.
"""

import json
import statistics
import textwrap

from workloads import BY_NAME, WORKLOADS

# Column order, and each server's heading.
SERVER_LABELS = {
    "stdlib": "stdlib",
    "fastsock": "fastsock",
    "fastsock-pure": "fastsock pure",
    "fastsock-workers": "fastsock workers",
    "fastsock-workers-affinity": "fastsock workers affinity",
    "fastsock-pure-workers": "fastsock pure workers",
    "fastsock-workers-timeout": "fastsock workers timeout",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "uvloop-reuseport": "uvloop N processes",
    "ceiling": "C ceiling",
}
REFERENCES = ("asyncio", "uvloop", "uvloop-reuseport", "ceiling")
CEILING_MARGIN = 0.10  # "at ceiling": within 10% of the C server's rate

LEGEND = [
    (
        "Requests per second: the median of the repetitions; ± is half their "
        "min-max range, relative to the median."
    ),
    "×N: the ratio to the stdlib's median in the same run (higher is better).",
    (
        "*: at ceiling, within 10% of the C echo server's rate: the load "
        "generator, not the server, may be the limit."
    ),
    (
        "!N: N requests failed (wrong, short or missing answers); failed requests "
        "never count as throughput."
    ),
    (
        "asyncio, uvloop and C ceiling have no socketserver class: every row of a "
        "workload and concurrency shows the same measurement of them."
    ),
]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(samples):
    """Summaries keyed by (workload, cls, server, conc), with ratios and flags."""
    groups = {}
    for s in samples:
        groups.setdefault((s["workload"], s["cls"], s["server"], s["conc"]), []).append(
            s
        )
    summary = {}
    for key, runs in groups.items():
        if BY_NAME[key[0]].measures_memory:
            summary[key] = _memory_summary(key, runs)
            continue
        rates = [r["rps"] for r in runs]
        median = statistics.median(rates)
        summary[key] = {
            "workload": key[0],
            "cls": key[1],
            "server": key[2],
            "conc": key[3],
            "reps": len(runs),
            "rps": median,
            "rps_min": min(rates),
            "rps_max": max(rates),
            "spread_pct": (max(rates) - min(rates)) / 2 / median * 100
            if median
            else None,
            "p50_us": _median(r["p50_us"] for r in runs),
            "p99_us": _median(r["p99_us"] for r in runs),
            "cpu_us_per_req": _median(r["cpu_us_per_req"] for r in runs),
            "peak_rss_mib": max((r["peak_rss_mib"] or 0) for r in runs) or None,
            "errors": sum(r["errors"] for r in runs),
            "client": runs[0]["client"],
        }
    for (workload, cls, server, conc), entry in summary.items():
        base = summary.get((workload, cls, "stdlib", conc))
        if BY_NAME[workload].measures_memory:
            entry["vs_stdlib"] = (
                entry["peak_rss_mib"] / base["peak_rss_mib"]
                if base and base["peak_rss_mib"] and server != "stdlib"
                else None
            )
            entry["at_ceiling"] = False
            continue
        entry["vs_stdlib"] = (
            entry["rps"] / base["rps"]
            if base and base["rps"] and server != "stdlib"
            else None
        )
        ceiling = summary.get((workload, None, "ceiling", conc))
        entry["at_ceiling"] = bool(
            ceiling
            and server != "ceiling"
            and ceiling["rps"]
            and entry["rps"] >= (1 - CEILING_MARGIN) * ceiling["rps"]
        )
    return summary


def _memory_summary(key, runs):
    """A memory workload's entry: medians of the idle samples, the peak."""
    return {
        "workload": key[0],
        "cls": key[1],
        "server": key[2],
        "conc": key[3],
        "reps": len(runs),
        "rps": None,
        "base_rss_mib": _median(r["base_rss_mib"] for r in runs),
        "idle_rss_mib": _median(r["idle_rss_mib"] for r in runs),
        "kib_per_conn": _median(r["kib_per_conn"] for r in runs),
        "threads": _median(r["threads"] for r in runs),
        "peak_rss_mib": max((r["peak_rss_mib"] or 0) for r in runs) or None,
        "errors": sum(r["errors"] for r in runs),
        "client": runs[0]["client"],
    }


def format_mib(mib):
    return "-" if mib is None else f"{mib:.1f}"


def format_rate(rps):
    """Requests per second, to three significant digits."""
    if rps is None:
        return "-"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if rps >= scale:
            value = rps / scale
            return f"{value:.3g}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return f"{rps:.3g}" if rps < 100 else f"{rps:.0f}"


def format_ratio(ratio):
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}"


def _number(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def _rate_cell(entry):
    if entry is None:
        return "-"
    text = format_rate(entry["rps"])
    if entry["spread_pct"] is not None and entry["reps"] > 1:
        text += f" ±{entry['spread_pct']:.0f}%"
    if entry["vs_stdlib"] is not None:
        text += f" ×{format_ratio(entry['vs_stdlib'])}"
    if entry["at_ceiling"]:
        text += "*"
    if entry["errors"]:
        text += f" !{entry['errors']}"
    return text


def _rows(summary, memory=False):
    """(workload, cls, conc) in presentation order, for what was measured:
    the throughput workloads, or (``memory``) the memory ones.

    A workload on which only reference servers ran gets rows without a
    class (cls None), one per concurrency.
    """
    measured = {(w, c, n) for (w, c, _, n) in summary}
    for workload in WORKLOADS:
        if workload.measures_memory != memory:
            continue
        rows = [
            (workload.name, cls, conc)
            for cls, concs in workload.classes.items()
            for conc in concs
            if (workload.name, cls, conc) in measured
        ]
        if not rows:
            concs = sorted({n for (w, c, n) in measured if w == workload.name})
            rows = [(workload.name, None, conc) for conc in concs]
        yield from rows


def _columns(summary, failures):
    present = {server for (_, _, server, _) in summary}
    present.update(f["server"] for f in failures)
    return [s for s in SERVER_LABELS if s in present]


def _failure(failures, workload, cls, server):
    for f in failures:
        if (f["workload"], f["server"]) == (workload, server) and f["cls"] in (
            cls,
            None,
        ):
            return f
    return None


def throughput_table(summary, failures):
    """Header and rows: one row per workload, class and concurrency."""
    servers = _columns(summary, failures)
    header = ["workload", "server class", "conc"] + [SERVER_LABELS[s] for s in servers]
    rows = []
    for workload, cls, conc in _rows(summary):
        row = [workload, cls or "-", str(conc)]
        for server in servers:
            owner = None if server in REFERENCES else cls
            entry = summary.get((workload, owner, server, conc))
            if entry is None and _failure(failures, workload, owner, server):
                row.append("FAILED")
            elif (
                entry is None
                and server in REFERENCES
                and not (server == "ceiling" or BY_NAME[workload].asyncio_reference)
            ):
                row.append("n/a")
            else:
                row.append(_rate_cell(entry))
        rows.append(row)
    return header, rows


def _sort_key(key):
    """Workload, class, concurrency and server, in presentation order."""
    workload, cls, server, conc = key
    classes = list(BY_NAME[workload].classes)
    return (
        [w.name for w in WORKLOADS].index(workload),
        cls is None,
        classes.index(cls) if cls else 0,
        conc,
        list(SERVER_LABELS).index(server),
    )


def detail_table(summary):
    """Header and rows: latency, CPU and memory of every measured server."""
    header = [
        "workload",
        "server class",
        "conc",
        "server",
        "req/s",
        "×stdlib",
        "p50 µs",
        "p99 µs",
        "CPU µs/req",
        "peak RSS MiB",
        "errors",
    ]
    rows = []
    for key in sorted(summary, key=_sort_key):
        e = summary[key]
        if e["rps"] is None:
            continue  # a memory workload: see memory_table
        rows.append(
            [
                e["workload"],
                e["cls"] or "(reference)",
                str(e["conc"]),
                SERVER_LABELS[e["server"]],
                format_rate(e["rps"]),
                "-" if e["vs_stdlib"] is None else format_ratio(e["vs_stdlib"]),
                _number(e["p50_us"]),
                _number(e["p99_us"]),
                _number(e["cpu_us_per_req"], 1),
                _number(e["peak_rss_mib"], 1),
                str(e["errors"]),
            ]
        )
    return header, rows


def memory_table(summary):
    """Header and rows for the memory workloads (idle connections held):
    the server's RSS once started, while holding them, per connection, its
    peak and its threads."""
    header = [
        "workload",
        "server class",
        "conns",
        "server",
        "RSS at start MiB",
        "RSS idle MiB",
        "KiB/conn",
        "peak RSS MiB",
        "peak ×stdlib",
        "threads",
        "errors",
    ]
    rows = []
    for key in sorted(summary, key=_sort_key):
        e = summary[key]
        if e["rps"] is not None:
            continue
        rows.append(
            [
                e["workload"],
                e["cls"] or "(reference)",
                str(e["conc"]),
                SERVER_LABELS[e["server"]],
                format_mib(e["base_rss_mib"]),
                format_mib(e["idle_rss_mib"]),
                _number(e["kib_per_conn"], 1),
                format_mib(e["peak_rss_mib"]),
                "-" if e["vs_stdlib"] is None else f"{e['vs_stdlib']:.2f}",
                _number(e["threads"]),
                str(e["errors"]),
            ]
        )
    return header, rows


def render_text(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def render_markdown(header, rows):
    def line(cells):
        return "| " + " | ".join(c.replace("*", "\\*") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def legend_text():
    return "\n".join(textwrap.fill(item, 88, subsequent_indent="  ") for item in LEGEND)


def legend_markdown():
    return "\n".join("- " + item.replace("*:", "\\*:", 1) for item in LEGEND)


def write_json(path, meta, samples, summary, failures):
    data = {
        "meta": meta,
        "failures": failures,
        "summary": sorted(
            summary.values(),
            key=lambda e: (e["workload"], e["cls"] or "", e["conc"], e["server"]),
        ),
        "samples": samples,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def _short_class(cls):
    """A class name short enough for a chart's tick label."""
    for long, short in (
        ("Server", ""),
        ("Threading", "Thr."),
        ("Forking", "Fork."),
        ("UnixStream", "Unix"),
    ):
        cls = (cls or "").replace(long, short)
    return cls


def write_chart(path, summary):
    """Throughput bar chart, one panel per workload; returns a note or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    summary = {k: e for k, e in summary.items() if e["rps"] is not None}
    if not summary:
        return "chart skipped: no throughput was measured"
    workloads = [w for w in WORKLOADS if any(k[0] == w.name for k in summary)]
    bar_servers = [
        s
        for s in SERVER_LABELS
        if s not in REFERENCES and any(k[2] == s for k in summary)
    ]
    ref_servers = [s for s in REFERENCES if any(k[2] == s for k in summary)]
    markers = {"asyncio": "^", "uvloop": "v", "ceiling": "_"}
    ncols = 2 if len(workloads) > 1 else 1
    nrows = (len(workloads) + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(8 * ncols, 3.6 * nrows), squeeze=False
    )
    for ax in axes.flat[len(workloads) :]:
        ax.set_visible(False)
    for ax, workload in zip(axes.flat, workloads):
        cases = [(cls, conc) for w, cls, conc in _rows(summary) if w == workload.name]
        width = 0.8 / max(1, len(bar_servers))
        for i, server in enumerate(bar_servers):
            values = [
                (summary.get((workload.name, cls, server, conc)) or {}).get("rps", 0)
                for cls, conc in cases
            ]
            xs = [
                x + (i - (len(bar_servers) - 1) / 2) * width for x in range(len(cases))
            ]
            ax.bar(xs, values, width, label=SERVER_LABELS[server])
        for server in ref_servers:
            points = [
                (x, summary[(workload.name, None, server, conc)]["rps"])
                for x, (_, conc) in enumerate(cases)
                if (workload.name, None, server, conc) in summary
            ]
            if points:
                xs, ys = zip(*points)
                ax.scatter(
                    xs,
                    ys,
                    marker=markers[server],
                    s=200 if server == "ceiling" else 40,
                    color="black" if server == "ceiling" else None,
                    label=SERVER_LABELS[server],
                    zorder=3,
                )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(
            [f"{_short_class(cls)}\nc={conc}" for cls, conc in cases],
            fontsize=7,
        )
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_rate(y)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("requests/s (log scale)")
        ax.set_title(workload.title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="upper center", ncol=len(legend))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (3.6 * nrows)))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


RESULTS_INTRO = (
    "Written by `python bench/run.py`: a full run rewrites this file, `--quick` "
    "and filtered runs leave it alone unless given `--results`.  Quote speed-ups "
    "as the ratios below: they compare servers measured in the same run on the "
    "same machine.  Rates depend on the machine and on what else it was doing "
    "(see the load average): compare ratios, not absolute rates, across runs."
)
DETAIL_NOTE = (
    "CPU µs/req: user + system time of the server process (and its reaped "
    "children) per answered request.  Peak RSS: the server's VmHWM."
)


MEMORY_NOTE = (
    "Each repetition opens the connections, echoes one line on each and "
    "holds them idle; the server's VmRSS is read once it has gone quiet.  "
    "RSS at start: before any request.  KiB/conn: (RSS idle - RSS at "
    "start) / conns.  Peak RSS: VmHWM over the whole run; peak ×stdlib: "
    "lower is better."
)


def results_markdown(meta, summary, failures, chart_name):
    """The text of RESULTS.md."""
    settings = meta["settings"]
    facts = [
        ("Date", meta["date"]),
        ("Commit", meta["commit"]),
        ("Command", f"`{meta['command']}`"),
        ("Machine", meta["machine"]),
        ("Load average", meta["load"]),
        ("Python", meta["python"]),
        ("fastsock engines", ", ".join(meta["engines"])),
        ("fastsock measured", meta.get("fastsock", "the checkout")),
        (
            "Method",
            (
                f"{meta['pinning']}; correctness check first; "
                f"{settings['warmup_s']} s warm-up, then {settings['reps']} × "
                f"{settings['duration_s']} s per server, interleaved across servers"
            ),
        ),
        ("Load generator", meta["clients"]),
    ]
    parts = [
        "# fastsock benchmark results",
        "",
        RESULTS_INTRO,
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in facts),
        "",
        "## Throughput (requests/s)",
        "",
        render_markdown(*throughput_table(summary, failures)),
        "",
        legend_markdown(),
        "",
        "## Latency, server CPU time and memory",
        "",
        DETAIL_NOTE,
        "",
        render_markdown(*detail_table(summary)),
        "",
    ]
    memory = memory_table(summary)
    if memory[1]:
        parts += [
            "## Memory with idle connections",
            "",
            MEMORY_NOTE,
            "",
            render_markdown(*memory),
            "",
        ]
    if meta.get("multicore"):
        parts += ["## Multi-core", "", *meta["multicore"], ""]
    if chart_name:
        parts += [
            "## Chart",
            "",
            f"![throughput per server and workload]({chart_name})",
            "",
        ]
    notes = meta["notes"] + [
        f"{f['server']} {f['cls'] or ''} on {f['workload']}: {f['reason']}"
        for f in failures
    ]
    if notes:
        parts += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)
