"""The daily-spend bar chart ``/spend day`` attaches (PNG, rendered with matplotlib)."""

from __future__ import annotations

import io

from storage.records import UsageSummary


def daily_spend_png(summary: UsageSummary, title: str) -> bytes:
    """A bar chart of dollars per day (days in order); ``summary`` is grouped by day."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    from matplotlib.figure import Figure

    groups = sorted(summary.groups, key=lambda g: g.key)
    days = [g.key for g in groups]
    dollars = [g.dollars for g in groups]
    figure = Figure(figsize=(8, 4), dpi=100)
    axes = figure.subplots()
    axes.bar(range(len(days)), dollars, color="#3b82f6")
    axes.set_title(title)
    axes.set_ylabel("US dollars")
    step = max(1, len(days) // 12)
    axes.set_xticks(range(0, len(days), step))
    axes.set_xticklabels(days[::step], rotation=45, ha="right", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
