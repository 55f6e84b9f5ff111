"""Values a run cannot use are refused by the schema itself (before any model loads), naming the key."""
import pytest

from rltool.config import ConfigError, EvalConfig, RolloutConfig, TrainerConfig


@pytest.mark.parametrize("make, message", [
    (lambda: TrainerConfig(grad_clip=-1.0), "trainer.grad_clip=-1.0: must be > 0"),
    (lambda: TrainerConfig(grad_clip=0.0), "trainer.grad_clip=0.0: must be > 0"),
    (lambda: TrainerConfig(warmup_steps=-2), "trainer.warmup_steps=-2: must be >= 0"),
    (lambda: RolloutConfig(max_prompt_len=0), "rollout.max_prompt_len=0: must be >= 1"),
    (lambda: EvalConfig(max_new_tokens=0), "eval.max_new_tokens=0: must be >= 1"),
])
def test_out_of_range_values_name_the_key(make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
