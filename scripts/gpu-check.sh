#!/usr/bin/env bash
# The GPU check (issue: CUDA backend), for a machine with an NVIDIA GPU and only a C++ compiler, nvcc and cmake:
# builds the CUDA backend for this GPU, runs every CUDA op against the CPU op and the model parity test
# (test-cuda: NMSE per op), then benchmarks GEMV (GB/s) and the tensor-core GEMM (TFLOP/s) and the engine
# (prefill, decode at batch 1/8/32) on MiniCPM4-0.5B- and 8B-shaped random BF16 checkpoints. Everything is
# printed and the summary lines are written to $1 (default gpu-check-summary.txt). Takes a few minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
summary=${1:-gpu-check-summary.txt}
work=${GPU_CHECK_DIR:-/tmp/minicpm-gpu-check}
mkdir -p "$work"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$summary"
t0=$(date +%s)
if ! cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native > "$work/cmake.log" 2>&1 ||
    ! cmake --build build-gpu -j "$(nproc)" --target test-cuda bench-engine make-model > "$work/build.log" 2>&1; then
    tail -40 "$work/cmake.log" "$work/build.log"
    note "build: FAILED"
    exit 1
fi
note "build: ok in $(($(date +%s) - t0)) s"

./build-gpu/test-cuda --perf | tee "$work/ops.log"
ops_rc=${PIPESTATUS[0]}
grep -E "^(ok|FAIL)" "$work/ops.log" | awk '{print $1}' | sort | uniq -c | sed 's/^ */ops: /' | tee -a "$summary"
grep -E "^perf:|model logits" "$work/ops.log" | tee -a "$summary"

for preset in 0.5b 8b; do
    dir="$work/model-$preset"
    [ -f "$dir/config.json" ] || ./build-gpu/make-model "$preset" "$dir" > /dev/null || { note "make-model $preset: FAILED"; continue; }
    MINICPM_BACKEND=cuda ./build-gpu/bench-engine "$dir" | tee "$work/bench-$preset.log"
    grep -E "^(backend|prefill|decode)" "$work/bench-$preset.log" | sed "s/^/bench $preset: /" | tee -a "$summary"
done
note "total: $(($(date +%s) - t0)) s; ops exit code $ops_rc"
exit "$ops_rc"
