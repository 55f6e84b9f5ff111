"""env=arithmetic is a global package: its tuned run (issue #15) must land on the top-level keys, yield to
the command line, and not leak into other environments."""


def test_arithmetic_brings_its_tuned_run(compose_config):
    cfg = compose_config("env=arithmetic")
    t = cfg.trainer
    assert (t.lr, t.lr_schedule, t.max_steps, t.eval_every, t.save_every) == (1e-5, "cosine", 70, 10, 20)
    assert (cfg.reward.name, cfg.eval.size, cfg.eval.max_new_tokens, cfg.rollout.max_new_tokens) == ("arithmetic", 200, 64, 64)
    assert cfg.algo.max_refill_rounds == 1 and cfg.env.name == "arithmetic" and cfg.env.operators == ["+", "-", "*"]


def test_the_command_line_wins_and_other_envs_keep_the_base_values(compose_config):
    cfg = compose_config("algo=dapo", "env=arithmetic", "reward=gsm8k", "trainer.lr=3e-5", "trainer.lr_schedule=constant")
    assert (cfg.algo.name, cfg.reward.name, cfg.trainer.lr, cfg.trainer.lr_schedule) == ("dapo", "gsm8k", 3e-5, "constant")
    gsm8k = compose_config("algo=dapo", "env=gsm8k")
    assert (gsm8k.trainer.lr, gsm8k.trainer.lr_schedule, gsm8k.trainer.max_steps, gsm8k.reward.name) == (2e-6, "constant", 100, "gsm8k")
    assert gsm8k.algo.max_refill_rounds == 2 and gsm8k.rollout.max_new_tokens == 256


def test_the_few_shot_variant_keeps_the_tuned_run_and_adds_worked_examples(compose_config):
    """env=arithmetic_fewshot (issue #15's prompt experiment) is env=arithmetic plus a system prompt."""
    cfg, base = compose_config("env=arithmetic_fewshot"), compose_config("env=arithmetic")
    assert (cfg.trainer, cfg.reward, cfg.rollout, cfg.env.name) == (base.trainer, base.reward, base.rollout, "arithmetic")
    assert base.env.system_prompt == "" and "54 * 23 = 54 * 20 + 54 * 3 = 1080 + 162 = 1242\n#### 1242" in cfg.env.system_prompt
    assert cfg.env.instruction != base.env.instruction
