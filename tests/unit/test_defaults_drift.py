"""Defaults live once: in the dataclasses of rltool/config.py. conf/config.yaml only picks the groups and
sets what needs an interpolation; a literal there would be a second default that can drift (it did:
trainer.lr 1e-6 vs 2e-6, trainer.save_every 50 vs 25, eval.size 0 vs 100)."""
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def test_config_yaml_repeats_no_dataclass_default():
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml"), resolve=False)
    literals = [f"{k}={v!r}" for k, v in leaves({k: v for k, v in raw.items() if k not in ("defaults", "hydra")})
                if not (isinstance(v, str) and "${" in v)]
    assert literals == [], "set these defaults in their dataclass in rltool/config.py, not in conf/config.yaml"


def test_composed_defaults_are_the_dataclass_defaults():
    """What `rltool train` uses with no overrides, for the keys no group sets, is the dataclass's value."""
    from hydra import compose, initialize_config_dir

    from rltool.config import EvalConfig, TrainerConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config")
    t, e = TrainerConfig(), EvalConfig()
    assert (cfg.trainer.lr, cfg.trainer.save_every, cfg.eval.size) == (t.lr, t.save_every, e.size) == (2e-6, 25, 100)
