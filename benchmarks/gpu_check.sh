#!/usr/bin/env bash
# One-shot GPU acceptance check (issue 17, item 4): CUDA-vs-CPU twins, featurization throughput vs traker,
# peak GPU memory, the roofline ratio and a CIFAR-shaped workflow run; one Markdown table + one JSON file.
#   benchmarks/gpu_check.sh                      # GPU machine, full sizes (under 8 minutes on one H100/H200)
#   benchmarks/gpu_check.sh --device cpu --tiny  # CPU, toy sizes (what CI runs)
#   benchmarks/gpu_check.sh --out DIR            # where gpu_check.md / gpu_check.json go (default benchmarks/gpu_check/)
# The project's environment is used when present (.venv), else $PYTHON, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" benchmarks/gpu_check.py "$@"
