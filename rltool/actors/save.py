"""Write a state dict as a plain HF model directory."""
from __future__ import annotations

import copy
from pathlib import Path

import torch


def save_plain(model, state: dict[str, torch.Tensor], path: Path) -> None:
    """`state` saved with `model`'s config as a plain HF directory (config.json, generation_config.json,
    model.safetensors), loadable by vLLM, `from_pretrained` and `rltool eval`.

    No model object is built (under ZeRO-3 building one would be partitioned collectively), so
    neither PEFT, a quantization config nor partitioned parameters end up in the directory. Tied
    duplicates should be left out of `state` (as save_pretrained does); `tie_word_embeddings`
    re-ties them on load. One safetensors file, whatever the size (vLLM and transformers read it).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = next(iter(state.values())).dtype
    config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    save_file({k: t.contiguous() for k, t in state.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
