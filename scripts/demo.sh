#!/usr/bin/env bash
# Set up .venv if needed, then run the demo on the embedded default (or pass
# `--model BASE --hypernet DIR` for real models).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/bootstrap.sh"
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
exec "$repo/.venv/bin/t2l-vllm" demo "$@"
