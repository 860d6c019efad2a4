"""The ratios as a PNG: one bar per comparison (measured rates), its target marked,
coloured by verdict; a diamond for the same ratio per core, from CPU time."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import evaluate
from benchmarks.runner import Outcome
from benchmarks.scenarios import Comparison

COLOURS = {"met": "#2a9d5c", "missed": "#d1495b", "": "#8c8c8c"}


def draw(path: Path, comparisons: list[Comparison], outcomes: list[Outcome], title: str) -> bool:
    """Write the chart; False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    by_name = {o.scenario.name: o for o in outcomes}
    bars = []
    per_core = []
    for c in comparisons:
        if c.baseline is None:
            continue
        value, verdict = evaluate(c, by_name)
        bars.append((c, value, verdict))
        per_core.append(evaluate(c, by_name, by_cpu=True)[0])
    known = ([v for _, v, _ in bars if v] + [v for v in per_core if v]
             + [c.target for c, _, _ in bars if c.target])
    # a log axis needs a positive left edge: bars without a value are drawn empty there
    left = min([0.1, *(v * 0.8 for v in known)])
    figure, axes = pyplot.subplots(figsize=(10, 0.45 * len(bars) + 1.6))
    rows = range(len(bars))
    axes.barh(rows, [(value or left) - left for _, value, _ in bars], left=left,
              color=[COLOURS.get(verdict, COLOURS[""]) for _, _, verdict in bars])
    for row, (c, value, verdict) in zip(rows, bars):
        if c.target is not None:
            axes.plot([c.target, c.target], [row - 0.4, row + 0.4], color="black", linewidth=2)
        text = f"{value:.2f}×" if value is not None else verdict
        axes.text(value or left, row, f" {text}", va="center", fontsize=9)
    axes.plot([v if v else float("nan") for v in per_core], list(rows), "D", color="white",
              markeredgecolor="black", markersize=6, linestyle="none", label="per core (from CPU)")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(list(rows), [c.label for c, _, _ in bars], fontsize=9)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlim(left, max([1.0, *known]) * 2)
    axes.axvline(1.0, color="#444444", linewidth=0.8, linestyle=":")
    axes.set_xlabel("ratio of req/s (log scale); black tick: the product's target; "
                    "green met, red missed, grey no target")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True
