#!/usr/bin/env bash
# Everything a lent GPU is for, in stages (each well under the device tool's 10 minutes):
#   bash benchmarks/run_gpu.sh setup      # venv with the machine's torch, fastdiff, test deps
#   bash benchmarks/run_gpu.sh tests      # every test on the GPU (kernels on CUDA tensors)
#   bash benchmarks/run_gpu.sh training   # fastdiff bench: training ops at the issue's shapes
#   bash benchmarks/run_gpu.sh noising    # fastdiff bench: noising ops
#   bash benchmarks/run_gpu.sh sampling   # fastdiff bench: sampling steps at N=16384, V=50258
#   bash benchmarks/run_gpu.sh memory     # fused projection + loss vs projection-then-kernel
#   bash benchmarks/run_gpu.sh gaussian   # q_sample, DDPM / DDIM, loss, rounding (bf16, fp32)
#   bash benchmarks/run_gpu.sh steploop   # demo transformer: time per step of each step-loop
#                                         #   engine vs its eager / graph-replayed forward
#   bash benchmarks/run_gpu.sh model      # the SASS throughput model of the same tree (no GPU
#                                         #   needed), to set beside the measured GB/s
# Results (JSON + PNG) go to $OUT when set (the device tool returns it), else benchmarks/results.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
VENV=.gpu-venv
stage="${1:-all}"

if [[ "$stage" == setup || "$stage" == all ]]; then
    python3 -m venv --system-site-packages "$VENV"   # keeps the machine's CUDA torch
    "$VENV/bin/pip" install -q ninja
    "$VENV/bin/pip" install -q --no-build-isolation -e ".[test]"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"

if [[ "$stage" == tests || "$stage" == all ]]; then
    pytest -q tests/test_kernels_training.py tests/test_kernels_ddp.py tests/test_losses.py \
        tests/test_kernels_sampling.py tests/test_sampling.py tests/test_updates.py \
        tests/test_kernels_gaussian.py tests/test_gaussian.py tests/test_concrete_score.py \
        tests/test_step_loop.py tests/test_samplers.py
fi
if [[ "$stage" == training || "$stage" == all ]]; then
    fastdiff bench --ops training --dtype bfloat16 float32 --out "$OUT" \
        --shapes 4096x32768 16384x50258 16384x131072 16384x50258x768
fi
if [[ "$stage" == noising || "$stage" == all ]]; then
    fastdiff bench --ops noising --dtype float32 --out "$OUT"
fi
if [[ "$stage" == sampling || "$stage" == all ]]; then
    fastdiff bench --dtype bfloat16 --out "$OUT" --shapes 16384x50258 65536x50258 --ops \
        sample_categorical sedd_analytic_absorb sedd_euler_absorb sedd_denoise_absorb \
        sedd_analytic_uniform mdlm_step confidence_unmask_step
    fastdiff bench --ops d3pm_step --dtype float32 --out "$OUT" --shapes gpu-quick
fi
if [[ "$stage" == gaussian || "$stage" == all ]]; then
    fastdiff bench --ops gaussian --dtype bfloat16 float32 --out "$OUT" --shapes gpu
fi
if [[ "$stage" == memory || "$stage" == all ]]; then
    python -m benchmarks.fused_linear_memory --out "$OUT"
fi
if [[ "$stage" == steploop || "$stage" == all ]]; then
    python -m benchmarks.step_loop_gpu --out "$OUT"
fi
if [[ "$stage" == model || "$stage" == all ]]; then
    fastdiff bench --model --out "$OUT"
fi
