"""final/README.md: the run's algorithm, settings, final accuracy, curves and the command that reproduces it."""
import json

from rltool.model_card import write_model_card
from rltool.plot import plot_run


def test_card_names_algorithm_settings_data_and_final_accuracy(tmp_path, compose_config):
    run, final = tmp_path / "dr_grpo-arithmetic-run", tmp_path / "dr_grpo-arithmetic-run" / "final"
    final.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy_strict": 0.05}, {"step": 1, "time/step": 9.0, "reward/mean": 0.2},
            {"step": 2, "time/step": 9.5, "reward/mean": 0.4}, {"step": 2, "eval/accuracy_strict": 0.3125}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_run(run)
    cfg = compose_config("algo=dr_grpo", "env=arithmetic", "trainer.max_steps=2", "++actors.policy.lora.r=8", "rollout.temperature=0.7")
    final_metrics = {"eval/accuracy_strict": 0.3125, "eval/format_rate": 1.0, "eval/success": 0.25, "eval/reward": 0.75}
    card = write_model_card(final, run, cfg, final_metrics).read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "trained with **dr_grpo**" in card and "for 2 steps on `arithmetic`" in card
    assert "| algorithm | dr_grpo (rollout grpo, advantage dr_grpo, loss clip, aggregation dr_grpo" in card
    assert "| eval/accuracy_strict | 0.3125 |" in card and "| LoRA | r=8, alpha=16" in card
    # the run's own reward first, and what it means: success is reward.success > 0, reward the weighted terms
    table = [line for line in card.splitlines() if line.startswith("| eval/")]
    assert table[:2] == ["| eval/success | 0.25 |", "| eval/reward | 0.75 |"] and len(table) == 4
    assert ("`eval/success`: the share of answers the success reward `gsm8k_flexible` scores above 0; "
            "`eval/reward`: their mean reward (gsm8k_flexible x 1.0)") in card  # env=arithmetic's reward
    assert "temperature 0.7" in card and "![training curves](curves.png)" in card
    assert "200 held-out `arithmetic` problems after step 2" in card  # env=arithmetic sets eval.size=200
    assert (final / "curves.png").stat().st_size > 1000
    assert "```bash\nrltool train" in card


def test_card_without_eval_says_so(tmp_path, compose_config):
    card = write_model_card(tmp_path, tmp_path, compose_config("eval.enabled=false"), {}).read_text()
    assert "No final evaluation was run" in card and "curves.png" not in card
