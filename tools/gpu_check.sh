#!/usr/bin/env bash
# The CUDA checks, in one call on a lent GPU machine (the `device` tool's `run`, from the repository root):
#
#     bash tools/gpu_check.sh                  # carry: .gpu-wheels (made here by tools/gpu_wheels.sh)
#
# That machine has its own python3 and torch and reaches no package registry. The script builds the
# extension there against that torch (pip --no-build-isolation, CUDA forced on, for the GPU it sees),
# installs missing test packages from .gpu-wheels, then runs the op tests (CUDA conformance, CPU parity,
# half types, determinism, opcheck), torch.compile on CUDA, and the CUDA benchmarks (ops, and the
# deformable models against their plain twins). Every step logs to
# $OUT (one file a step, summary.txt with each step's exit status); a failing step does not stop the rest.
# Give the call timeout_s 600: the script has never run on a GPU, and ~5-8 minutes is an estimate.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
status=0

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit status (124: it
# ran out of time). The limits keep one hung step from taking the call's whole device time from the rest.
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
}

step env 60 sh -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
if [ -d .gpu-wheels ]; then
  missing=$($PY -c 'import importlib.util as u; print(" ".join(p for m, p in [("pytest", "pytest"), ("expecttest", "expecttest"), ("click", "click"), ("tqdm", "tqdm"), ("safetensors", "safetensors")] if u.find_spec(m) is None))')
  [ -z "$missing" ] || step wheels 60 $PY -m pip install --no-index --find-links .gpu-wheels $missing
fi
# Build for the GPU that is there only (a few minutes less than the default list).
arch=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
export DCNVIZ_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch"
step build 300 sh -c "$PY -m pip install --no-build-isolation --no-deps --no-index -e . || $PY setup.py build_ext --inplace"
step ops_tests 240 $PY -m pytest -q -rs tests/test_deform_conv.py tests/test_deform_psroi_pool.py tests/test_psroi_pool.py
step compile_tests 180 $PY -m pytest -q -rs tests/test_ops_compile.py
step bench_ops_cuda 90 $PY -m dcnviz bench ops --device cuda
step bench_ops_cuda_json 90 $PY -m dcnviz bench ops --device cuda --json
step bench_ops_cuda_channels_last 90 $PY -m dcnviz bench ops --device cuda --op conv --channels-last
# goal 5 of #16: rfcn_dcn_coco <= 1.2x its plain twin on a GPU, then DeepLab's pair and bfloat16
step bench_model_rfcn 120 $PY -m dcnviz bench model -m rfcn_dcn_coco --compare rfcn_coco --device cuda --repeats 10
step bench_model_deeplab 120 $PY -m dcnviz bench model -m deeplab_dcn_cityscapes --compare deeplab_cityscapes --device cuda --repeats 5
step bench_model_rfcn_bf16 120 $PY -m dcnviz bench model -m rfcn_dcn_coco --compare rfcn_coco --device cuda --dtype bfloat16 --repeats 10
exit $status
