#!/usr/bin/env bash
# The checks that need a CUDA GPU (strategy presets in bf16, QLoRA on CUDA, throughput/MFU of an EXAONE-1.2B-shaped
# model, `tuneloop plan` against measured memory), under 8 minutes on one GPU; JSON report in
# runs/gpu_check/gpu_check.json. Options: see `scripts/gpu_check.sh --help` (scripts/gpu_check.py).
#   scripts/gpu_check.sh                # or: make gpu-check
#   scripts/gpu_check.sh --dry-run      # list the jobs (no GPU needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" scripts/gpu_check.py "$@"
