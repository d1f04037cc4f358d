"""Training curves from a run's stats.jsonl, as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from ..utils.stats import read_jsonl


def plot_curves(runs: dict[str, Path], keys: list[str], path: Path, title: str = "") -> Path:
    """One panel per key, one line per run; keys missing in a run are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: read_jsonl(Path(run) / "stats.jsonl") for name, run in runs.items()}
    keys = [k for k in keys if any(k in row for rows in data.values() for row in rows)]
    if not keys:
        raise ValueError(f"none of {keys} was logged in {list(runs.values())}")
    cols = min(3, len(keys))
    rows_n = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rows in data.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
