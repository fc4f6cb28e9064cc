"""``duroxide-trio stress --report report.html``: one self-contained HTML file with charts.

Charts are drawn with plotly (the optional ``report`` extra: ``pip install 'duroxide-trio[report]'``) and
plotly.js is inlined once into the page, so the file opens without a network. For each run: throughput
(instances completed per second, failures marked in red), latency p50/p95/p99 of the instances completed
in each second, and instances in flight; then the suite's runs side by side (throughput and latency per
run) and the comparison table.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._result import StressResult

__all__ = ["require_plotly", "render_report", "write_report"]

_INSTALL_HINT = "--report needs plotly: pip install 'duroxide-trio[report]' (or pip install plotly)"
_LATENCY_COLOURS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#9467bd"}
_CONFIG = {"displaylogo": False, "responsive": True}


def require_plotly() -> Any:
    """Import plotly or explain how to install it.

    Returns:
        The ``plotly`` module.

    Raises:
        ImportError: plotly is not installed; the message says which extra to install.
    """
    try:
        import plotly
        import plotly.graph_objects  # noqa: F401 - fail here, not halfway through a report
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return plotly


def _run_title(index: int, r: StressResult) -> str:
    c = r.config
    state = "PASS" if r.passed else ("INTERRUPTED" if r.interrupted else "FAIL")
    return (
        f"Run {index}: {r.provider} · {r.scenario} · {c.concurrency_label} · {c.max_concurrent} in flight · "
        f"{c.tasks_per_instance} tasks — {state}"
    )


def _run_figure(index: int, r: StressResult) -> Any:
    from plotly.subplots import make_subplots

    go = require_plotly().graph_objects
    seconds = [p.second for p in r.timeline]
    figure = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
        subplot_titles=("Throughput (instances completed per second)",
                        "Latency of the instances completed in each second (ms)", "Instances in flight"),
    )  # fmt: skip
    figure.add_trace(
        go.Bar(x=seconds, y=[p.completed for p in r.timeline], name="completed/s", marker_color="#2ca02c"),
        row=1, col=1,
    )  # fmt: skip
    failed = [(p.second, p.failed) for p in r.timeline if p.failed]
    figure.add_trace(
        go.Scatter(
            x=[s for s, _ in failed], y=[n for _, n in failed], name="failed/s", mode="markers",
            marker={"color": "#d62728", "size": 11, "symbol": "x"},
            hovertemplate="second %{x}: %{y} failed<extra></extra>",
        ),
        row=1, col=1,
    )  # fmt: skip
    for key, colour in _LATENCY_COLOURS.items():
        values = [getattr(p, f"{key}_ms") if p.completed else None for p in r.timeline]
        figure.add_trace(
            go.Scatter(x=seconds, y=values, name=key, mode="lines+markers", line={"color": colour},
                       connectgaps=False),
            row=2, col=1,
        )  # fmt: skip
    figure.add_trace(
        go.Scatter(x=seconds, y=[p.in_flight for p in r.timeline], name="in flight", mode="lines",
                   line={"color": "#17becf", "shape": "hv"}),
        row=3, col=1,
    )  # fmt: skip
    for second, _ in failed:  # a red band over every second with failures, on all three charts
        figure.add_vrect(x0=second - 0.5, x1=second + 0.5, fillcolor="#d62728", opacity=0.12, line_width=0)
    if r.config.duration and seconds:
        figure.add_vline(x=r.config.duration, line_dash="dot", line_color="grey",
                         annotation_text="end of load", annotation_position="top left")  # fmt: skip
    figure.update_xaxes(title_text="second since the load began", row=3, col=1)
    figure.update_layout(
        title=_run_title(index, r), height=720, template="plotly_white", legend={"orientation": "h"},
        margin={"t": 90, "l": 60, "r": 20, "b": 50},
    )  # fmt: skip
    return figure


def _suite_figure(results: Sequence[StressResult]) -> Any:
    from plotly.subplots import make_subplots

    go = require_plotly().graph_objects
    labels = [f"{i}. {r.scenario} {r.config.concurrency_label}" for i, r in enumerate(results, 1)]
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Throughput (orch/s, load phase)", "Latency per instance (ms)")
    )
    figure.add_trace(
        go.Bar(
            x=labels, y=[round(r.orch_throughput, 2) for r in results], name="orch/s",
            marker_color=["#2ca02c" if r.passed else "#d62728" for r in results],
            text=[f"{r.success_rate:.1f}% ok" for r in results], textposition="outside",
        ),
        row=1, col=1,
    )  # fmt: skip
    for key, colour in _LATENCY_COLOURS.items():
        figure.add_trace(
            go.Bar(
                x=labels,
                y=[round(getattr(r.latency_ms, key), 1) if r.latency_ms.count else None for r in results],
                name=key, marker_color=colour,
            ),
            row=1, col=2,
        )  # fmt: skip
    figure.update_layout(
        title="The runs side by side (a red bar: the run did not reach 100 %)", barmode="group",
        height=420, template="plotly_white", legend={"orientation": "h"},
    )  # fmt: skip
    return figure


def _table_html(results: Sequence[StressResult]) -> str:
    from ._report import HEADERS, comparison_rows

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for r, row in zip(results, comparison_rows(results), strict=True):
        css = "" if r.passed else ' class="bad"'
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _failures_html(results: Sequence[StressResult], database_url: str | None = None) -> str:
    from ._report import mask_text

    items = []
    for i, r in enumerate(results, 1):
        for f in r.failures[:10]:
            items.append(
                f"<li>run {i}, second {f.at_s:.1f}: <code>{html.escape(f.instance_id)}</code> "
                f"{html.escape(f.kind)}: {html.escape(mask_text(f.message, database_url)[:300])}</li>"
            )
    if not items:
        return "<p>No failures.</p>"
    return "<ul>" + "".join(items) + "</ul>"


def render_report(
    results: Sequence[StressResult],
    *,
    provider: str,
    database_url: str | None = None,
    title: str = "duroxide-trio stress report",
) -> str:
    """The report as one HTML document (plotly.js inlined once: no network needed to view it).

    Args:
        results: the runs, in order (one chart block each, then the runs side by side).
        provider: shown in the header.
        database_url: shown masked (a password never reaches the file).
        title: the page title.

    Returns:
        The HTML text.

    Raises:
        ImportError: plotly is not installed.
    """
    from ._report import mask_text, versions

    require_plotly()
    figures = [_run_figure(i, r) for i, r in enumerate(results, 1)]
    if len(results) > 1:
        figures.insert(0, _suite_figure(results))
    divs = []
    for n, figure in enumerate(figures):
        divs.append(
            figure.to_html(
                full_html=False, include_plotlyjs=(n == 0), config=_CONFIG, div_id=f"chart-{n + 1}"
            )
        )
    vers = versions()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = html.escape(provider + (f" ({mask_text(database_url, database_url)})" if database_url else ""))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.bad td {{ background: #fde8e8; }}
.chart {{ margin: 1.5rem 0; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Provider {where} · generated {when} · Python {html.escape(vers.get("python", "?"))},
duroxide-trio {html.escape(vers.get("duroxide-trio", "?"))} · {len(results)} run(s)</p>
{_table_html(results)}
{"".join(f'<div class="chart">{d}</div>' for d in divs)}
<h2>Failures</h2>
{_failures_html(results, database_url)}
</body>
</html>
"""


def write_report(
    path: str | os.PathLike[str],
    results: Sequence[StressResult],
    *,
    provider: str,
    database_url: str | None = None,
    title: str = "duroxide-trio stress report",
) -> Path:
    """Write :func:`render_report` to ``path`` (parent directories are created); returns the path.

    Raises:
        ImportError: plotly is not installed.
        OSError: the file cannot be written.
    """
    text = render_report(results, provider=provider, database_url=database_url, title=title)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target
