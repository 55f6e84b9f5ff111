"""scripts/bench_vs_trl.py's statistics and arguments (the benchmark itself is run by hand, never timed in tests)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_vs_trl.py"
spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def part(*seconds):
    return {"steps": [{"step": i + 1, "seconds": s, "cpu_s": 2 * s} for i, s in enumerate(seconds)]}


def test_medians_leave_the_warmup_out_and_pool_every_repeat():
    # rltool measured: 10, 12, 11 | 13, 9, 10 -> sorted 9 10 10 11 12 13, median 10.5; warm-ups 99 ignored
    # trl measured:    20, 30, 22 | 21, 40, 25 -> sorted 20 21 22 25 30 40, median 23.5
    runs = [{"rltool": part(99, 10, 12, 11), "trl": part(99, 20, 30, 22)},
            {"rltool": part(99, 13, 9, 10), "trl": part(99, 21, 40, 25)}]
    s = bench.summarize(runs)
    assert s["rltool"] == {"median_s": 10.5, "min_s": 9, "max_s": 13, "n_steps": 6, "median_cpu_s": 21.0}
    assert (s["trl"]["median_s"], s["trl"]["min_s"], s["trl"]["max_s"]) == (23.5, 20, 40)
    assert s["ratio_median"] == round(10.5 / 23.5, 3)
    # per repeat: 11/22 = 0.5 and 10/25 = 0.4
    assert s["ratio_per_repeat"] == [0.5, 0.4] and s["ratio_spread"] == [0.4, 0.5]


def test_sides_alternate_and_short_runs_are_refused(capsys):
    assert bench.schedule(2) == [(0, "rltool"), (0, "trl"), (1, "rltool"), (1, "trl")]
    args = bench.parse_args(["--repeats", "3"])
    assert (args.steps, args.repeats) == (5, 3)
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "1"])
    assert "at least 5 measured steps" in capsys.readouterr().err


def test_both_sides_generate_full_length(tmp_path):
    cfg, overrides = bench.compose_config(bench.parse_args(["--max-new-tokens", "16"]), str(tmp_path))
    assert cfg.rollout.ignore_eos and cfg.rollout.max_new_tokens == 16 and cfg.trainer.max_steps == 1 + 5
    assert "bench_chars" in {t.name for t in cfg.reward.terms}
