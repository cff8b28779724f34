#!/usr/bin/env bash
# Wheels of the test packages that tools/gpu_check.sh may find missing on the GPU machine (which reaches no
# registry): pure-Python or abi3 wheels only, so they fit whatever python3 that machine has. Run here, then
# carry .gpu-wheels with the check.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --python-version 3.10 -d .gpu-wheels \
  pytest expecttest click tqdm safetensors
du -sh .gpu-wheels
