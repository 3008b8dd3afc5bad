#!/usr/bin/env bash
# Installs the diffattr package itself into this conda env. Snakemake runs <env>.post-deploy.sh once,
# right after creating the env (`--sdm conda`), with the env active and the run's working directory,
# the repository root, as the current directory. The env file beside this script holds every
# dependency, so pip installs diffattr alone: --no-deps (nothing pulled from the index, no torch in a
# torch-free env) and --no-build-isolation (the env's own setuptools builds it). Editable, so jobs run
# the repository's current code. The three envs/*.post-deploy.sh are one script (tests/test_envs.py).
set -euo pipefail
if ! grep -qs '^name = "diffattr"$' pyproject.toml; then
    echo "envs/*.post-deploy.sh: run snakemake from the diffattr repository root ($PWD has no diffattr pyproject.toml)." >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e .
