"""Shared test setup. vLLM runs in-process in the tests that use it, like in `rltool train`."""
import ctypes
import gc
import os
import shutil

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import pytest  # noqa: E402

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

gpu_test = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(scope="module", autouse=True)
def free_the_modules_disk_and_memory(request, tmp_path_factory):
    """Training runs write checkpoints of 1-3 GB each; a full suite kept them all (37 GB) until the session
    ended, and a CI run on a shared disk failed writing one. A module's temporary dirs go once its tests have
    passed (a failing module keeps them to look at); per-test tmp_path dirs follow tmp_path_retention_policy.
    Modules that hold models and engines in this process hand their heap back before the next module's
    training subprocesses start (a sweep job was once OOM-killed beside a 6 GB pytest process)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


@pytest.fixture(scope="session")
def compose_config():
    """The config `rltool train <overrides>` would run, composed by Hydra without loading anything."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rltool.cli import conf_dir
    from rltool.config import register_configs

    def composed(*overrides):
        register_configs()
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            return OmegaConf.to_object(compose(config_name="config", overrides=["output_dir=x", *overrides]))
    return composed


@pytest.fixture(scope="session")
def tok():
    """The embedded model's tokenizer (chat template included), loaded once for the unit tests that build
    prompts; `make setup` materializes it."""
    from transformers import AutoTokenizer

    from rltool.actors.embedded import rltool_home

    path = rltool_home() / "models" / "smollm2-135m-instruct"
    if not (path / "tokenizer.json").exists():
        pytest.skip("embedded model not materialized (python -m rltool.actors.embedded)")
    return AutoTokenizer.from_pretrained(path)
