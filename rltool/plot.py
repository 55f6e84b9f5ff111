"""Training curves and eval tables from metrics.jsonl, so a finished run needs no wandb to inspect.

Uses matplotlib's object API with the Agg canvas instead of pyplot: no display is needed and the
process-wide backend (a notebook's, say) is left alone.
"""
from __future__ import annotations

from pathlib import Path

from rltool.metrics import read_metrics

PANELS = [
    ("train reward", ["reward/mean", "reward/success"]),
    ("eval", ["eval/accuracy_strict", "eval/accuracy_flexible", "eval/format_rate", "eval/reward", "eval/success"]),
    ("loss", ["loss/kl"]),
    ("value", ["loss/value", "value/explained_var"]),
]
"""Each panel shows the keys that are present; the loss panel falls back to loss/policy. The value panel comes
from encoder-agent (PPO) runs, whose x axis counts environment steps."""


def plot_run(run_dir: Path) -> Path:
    """Read run_dir/metrics.jsonl, write run_dir/curves.png; panels with no data are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    present = {k for row in rows for k in row}
    panels = [(title, [k for k in keys if k in present]) for title, keys in PANELS]
    if not panels[2][1] and "loss/policy" in present:  # kl is absent when beta = 0
        panels[2] = ("loss", ["loss/policy"])
    # runs of several actors: each actor's own reward and entropy (<actor>/reward/mean, ...)
    per_actor = sorted(k for k in present if k.count("/") == 2 and k.endswith(("/reward/mean", "/policy/entropy_trained")))
    panels.append(("per actor", per_actor))
    panels = [(title, keys) for title, keys in panels if keys]

    fig = Figure(figsize=(8, 2.6 * max(len(panels), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(panels), 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(row["step"], row[key]) for row in rows if key in row]
            # eval runs every few steps: markers keep sparse points visible
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics logged", ha="center", va="center", transform=axes[0].transAxes)
    axes[-1].set_xlabel("environment steps" if "loss/value" in present else "step")
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    return out


def summarize_eval(run_dir: Path) -> list[tuple[int, dict]]:
    """(step, {eval/* metrics}) for each step that ran an eval, in step order."""
    out = []
    for row in read_metrics(Path(run_dir) / "metrics.jsonl"):
        evals = {k: v for k, v in row.items() if k.startswith("eval/")}
        if evals:
            out.append((row["step"], evals))
    return out
