"""final/README.md: the run's algorithm, settings, final accuracy, curves and the command that reproduces it."""
import json

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rltool.cli import conf_dir
from rltool.config import register_configs
from rltool.model_card import write_model_card
from rltool.plot import plot_run


def config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["output_dir=x", *overrides])
    return OmegaConf.to_object(cfg)


def test_card_names_algorithm_settings_data_and_final_accuracy(tmp_path):
    run, final = tmp_path / "dr_grpo-arithmetic-run", tmp_path / "dr_grpo-arithmetic-run" / "final"
    final.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy_strict": 0.05}, {"step": 1, "time/step": 9.0, "reward/mean": 0.2},
            {"step": 2, "time/step": 9.5, "reward/mean": 0.4}, {"step": 2, "eval/accuracy_strict": 0.3125}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_run(run)
    cfg = config("algo=dr_grpo", "env=arithmetic", "trainer.max_steps=2", "++actors.policy.lora.r=8", "rollout.temperature=0.7")
    card = write_model_card(final, run, cfg, {"eval/accuracy_strict": 0.3125, "eval/format_rate": 1.0}).read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "trained with **dr_grpo**" in card and "for 2 steps on `arithmetic`" in card
    assert "| algorithm | dr_grpo (rollout grpo, advantage dr_grpo, loss clip, aggregation dr_grpo" in card
    assert "| eval/accuracy_strict | 0.3125 |" in card and "| LoRA | r=8, alpha=16" in card
    assert "temperature 0.7" in card and "![training curves](curves.png)" in card
    assert "100 held-out `arithmetic` problems after step 2" in card  # eval.size=100 of the 200
    assert (final / "curves.png").stat().st_size > 1000
    assert "```bash\nrltool train" in card


def test_card_without_eval_says_so(tmp_path):
    card = write_model_card(tmp_path, tmp_path, config("eval.enabled=false"), {}).read_text()
    assert "No final evaluation was run" in card and "curves.png" not in card
