"""The benches' PNG plots (docs/benchmarks.md), with matplotlib from the ``bench`` extra
(``make install`` installs it). Headless: the Agg backend, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # the bench extra is missing
        raise SystemExit("plots need matplotlib: .local/venv/bin/pip install -c requirements.lock -e '.[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bars(path: Path, names: Sequence[str], rates: Sequence[float], stacks: dict[str, Sequence[float]], *,
         title: str, rate_label: str, cpu_label: str) -> None:
    """Two panels side by side: one bar per system (``rates``), and per system a stacked
    bar of ``stacks`` (e.g. CPU per message of the system, RabbitMQ and Kafka)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(names))
    left.bar(x, rates, color="#4878a8")
    left.set_ylabel(rate_label)
    bottom = [0.0] * len(names)
    for part, values in stacks.items():
        right.bar(x, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_ylabel(cpu_label)
    right.legend()
    for axis in (left, right):
        axis.set_xticks(list(x), names, rotation=25, ha="right")
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)


def lines(path: Path, xs: Sequence[float], series: dict[str, Sequence[float | None]], *, title: str,
          xlabel: str, ylabel: str, logx: bool = True, logy: bool = True) -> None:
    """One line per series over ``xs`` (``None``: no point there)."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for name, values in series.items():
        points = [(x, y) for x, y in zip(xs, values, strict=True) if y is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if logx:
        axis.set_xscale("log")
    if logy:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    axis.set_title(title)
    _save(fig, path)


def stacked(path: Path, names: Sequence[str], stacks: dict[str, Sequence[float]], *, title: str, ylabel: str) -> None:
    """One horizontal stacked bar per name (e.g. latency per stage, before and after a cut)."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(9, 1.2 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for part, values in stacks.items():
        axis.barh(list(names), values, left=left, label=part)
        left = [a + v for a, v in zip(left, values, strict=True)]
    axis.set_xlabel(ylabel)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=min(4, len(stacks)), fontsize="small")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title)
    _save(fig, path)
