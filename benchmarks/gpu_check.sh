#!/usr/bin/env bash
# The GPU check of issue 10 on a lent GPU (see benchmarks/gpu_check.py): hypernetwork latency L/M/S
# against the card's measured compute and bandwidth floors, the encoder's latency, one T2L SFT step on a
# random-weight Llama-3.1-8B-shaped base. Needs only torch and transformers (no vLLM, nothing
# installed, nothing downloaded). Expected 2-3 minutes on one H200; stopped after GPU_CHECK_TIMEOUT_S
# (default 420 s) so that the whole run stays under 8 minutes.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same code at tiny sizes on CPU
#
# Writes gpu_check.json and gpu_check.log to $OUT when it is set (the device tool returns the files
# written there), else to benchmarks/results/. PYTHON picks the interpreter (default: python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
out_dir="${OUT:-$repo/benchmarks/results}"
mkdir -p "$out_dir"

if command -v nvidia-smi >/dev/null 2>&1; then
    card="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)" || true
else
    card="none (nvidia-smi not found)"
fi
echo "card (nvidia-smi): $card" | tee "$out_dir/gpu_check.log"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false  # nothing may reach the network
timeout "${GPU_CHECK_TIMEOUT_S:-420}" "$python" "$repo/benchmarks/gpu_check.py" --out "$out_dir/gpu_check.json" "$@" \
    2>&1 | tee -a "$out_dir/gpu_check.log"
