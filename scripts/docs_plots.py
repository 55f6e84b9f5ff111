"""Draws the documentation's plots into docs/img/ from the numbers in its tables (docs/results.md,
docs/benchmarks.md). The runs' own curves.png stay in their run directories, which are not committed;
these small PNGs are what the docs show instead. Re-run after changing a table:

    python scripts/docs_plots.py            # writes docs/img/*.png (a few tens of KB each)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
STYLE = dict(dpi=72, bbox_inches="tight")

# docs/results.md, "Arithmetic: the run that learns" (rltool train algo=dapo env=arithmetic, 3 seeds)
ARITHMETIC_STEPS = [0, 10, 20, 30, 40, 50, 60, 70]
ARITHMETIC_SEEDS = {
    "seed 0": [0.040, 0.200, 0.225, 0.225, 0.240, 0.265, 0.280, 0.275],
    "seed 1": [0.040, 0.185, 0.255, 0.265, 0.295, 0.305, 0.315, 0.320],
    "seed 2": [0.040, 0.070, 0.175, 0.230, 0.240, 0.265, 0.275, 0.270],
}
# docs/results.md, "Why arithmetic plateaus" (GRPO, constant lr, 100 problems)
PLATEAU_STEPS = [0, 10, 20, 30, 40, 50, 60]
PLATEAU = [0.05, 0.09, 0.30, 0.27, 0.27, 0.22, 0.20]

# docs/results.md, "GSM8K format with reward=gsm8k_shaped" (40 steps, 100 problems)
SHAPED_STEPS = [0, 10, 20, 30, 40]
SHAPED = {
    "format rate (#### present)": [0.15, 0.81, 0.98, 0.97, 0.97],
    "gated format credit earned": [0.12, 0.28, 0.73, 0.82, 0.85],
    "accuracy (flexible)": [0.01, 0.02, 0.04, 0.00, 0.00],
}

# docs/benchmarks.md: side-by-side numbers, (title, (name, value), (other name, other value), unit)
SIDE_BY_SIDE = [
    ("GRPO step\n(4 x 4 x 64 tokens)", ("rltool", 13.1), ("TRL\nGRPOTrainer", 16.8), "s, lower is better"),
    ("generation\n(8 x 4 x 64 tokens)", ("vLLM", 233.7), ("HF\ngenerate", 82.0), "tok/s, higher is better"),
    ("update-phase logits\nmemory", ("chunked\n(default)", 0.23), ("plain\nlog-probs", 1.88), "GiB, lower is better"),
    ("PPO, slippery\nFrozenLake", ("rltool", 0.38), ("stable-\nbaselines3", 0.05), "ms / env step, lower is better"),
]


def curves(out: Path, file: str, steps, series: dict, ylabel: str, ylim, title: str, legend: str, height: float,
           extra=None) -> None:
    """One line per series over training steps, in the docs' style."""
    fig, ax = plt.subplots(figsize=(6, height))
    for name, values in series.items():
        ax.plot(steps, values, marker="o", label=name)
    if extra:
        extra(ax)
    ax.set(xlabel="training step", ylabel=ylabel, ylim=ylim, title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend)
    fig.savefig(out / file, **STYLE)
    plt.close(fig)


def arithmetic(out: Path) -> None:
    plateau = lambda ax: ax.plot(PLATEAU_STEPS, PLATEAU, marker="s", linestyle="--", color="grey",  # noqa: E731
                                 label="GRPO, constant lr (earlier default; 100 problems)")
    curves(out, "arithmetic_seeds.png", ARITHMETIC_STEPS,
           {f"DAPO, cosine lr, {name}": v for name, v in ARITHMETIC_SEEDS.items()}, "held-out accuracy", (0, 0.4),
           "rltool train algo=dapo env=arithmetic (SmolLM2-135M, 2 CPU cores)", "lower right", 3.2, plateau)


def gsm8k_shaped(out: Path) -> None:
    curves(out, "gsm8k_shaped.png", SHAPED_STEPS, SHAPED, "share of held-out answers", (0, 1.05),
           "GSM8K with reward=gsm8k_shaped (SmolLM2-135M, 2 CPU cores)", "center right", 3.0)


def side_by_side(out: Path) -> None:
    fig, axes = plt.subplots(1, len(SIDE_BY_SIDE), figsize=(10, 2.8))
    for ax, (label, (name, ours), (other, theirs), unit) in zip(axes, SIDE_BY_SIDE):
        bars = ax.bar([name, other], [ours, theirs], color=["tab:blue", "tab:grey"])
        ax.bar_label(bars, fmt="%g", fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.set_ylabel(unit, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.margins(y=0.2)
    fig.suptitle("Side by side, 2-core CPU (docs/benchmarks.md)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "side_by_side.png", **STYLE)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    arithmetic(out)
    gsm8k_shaped(out)
    side_by_side(out)
    for png in sorted(out.glob("*.png")):
        print(f"{png}: {png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
