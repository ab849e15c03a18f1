#!/usr/bin/env bash
# The GPU check (issue: CUDA backend), for a machine with an NVIDIA GPU and only a C++ compiler, nvcc and cmake:
# builds the CUDA backend for this GPU, runs every CUDA op against the CPU op and the model parity test
# (test-cuda: NMSE per op, split-K decode attention, the device sampler's greedy / chi-square / seed checks,
# packed q8/q4 GEMV, the q8/q4 tensor-core GEMM (mma.sync), the device arena, the engine sampling on the device,
# InfLLM v2 compression / block selection / sparse attention, token-tree rows of it and a sparse checkpoint,
# speculative decoding on it past dense_len against plain decoding, CUDA graph decode steps
# bit-identical to eager ones), then benchmarks GEMV (GB/s, bf16 / q8 / q4), the tensor-core GEMMs (TFLOP/s,
# bf16 and q8 / q4), split-K attention, a sparse decode step dense vs sparse, a sparse verify tree vs the same
# rows as a causal chunk and the sampler, each against the
# device's peak where this script knows it, and the engine (prefill, decode at batch 1/8/32) on MiniCPM4-0.5B-
# and 8B-shaped random BF16 checkpoints (0.5B also q4, and also with CUDA graphs off). Everything is printed and
# the summary lines are written to $1 (default gpu-check-summary.txt). Meant to finish within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
summary=${1:-gpu-check-summary.txt}
work=${GPU_CHECK_DIR:-/tmp/minicpm-gpu-check}
mkdir -p "$work"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$summary"
# Datasheet peaks: HBM/GDDR GB/s and dense BF16 tensor TFLOP/s (f32 accumulation), by GPU name.
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu_name" in
    *H200*) peak_gbs=4800 peak_tf=989 ;;
    *H100*PCIe*) peak_gbs=2000 peak_tf=756 ;;
    *H100*) peak_gbs=3350 peak_tf=989 ;;
    *A100*80GB*) peak_gbs=2039 peak_tf=312 ;;
    *A100*) peak_gbs=1555 peak_tf=312 ;;
    *L40S*) peak_gbs=864 peak_tf=362 ;;
    *4090*) peak_gbs=1008 peak_tf=165 ;;
    *L4) peak_gbs=300 peak_tf=121 ;;
    *A10) peak_gbs=600 peak_tf=125 ;;
    *Orin*) peak_gbs=205 peak_tf=43 ;;
    *) peak_gbs=0 peak_tf=0 ;;
esac
note "peak: ${peak_gbs} GB/s, ${peak_tf} TFLOP/s dense bf16 (0 = this script does not know $gpu_name)"
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
grep -E "^FAIL" "$work/ops.log" | tee -a "$summary"
grep -E "model logits|engine|sample|arena|graph|spec sparse|q-gemm.*(LM head|FAIL)" "$work/ops.log" | grep -v "^perf:" |
    tee -a "$summary"
# InfLLM v2: ok / FAIL per check family (caches bit-identical, block sets identical, output NMSE; for token trees
# also the row kinds present and the dense op's rows untouched).
grep -E "^(ok|FAIL) +(kv_compress|sparse)" "$work/ops.log" |
    awk '{print $1, ($2 == "kv_compress" ? $2 : $3 == "tree" ? $2 " " $3 " " $4 : $2 " " $3)}' | sort | uniq -c |
    sed 's/^ */infllm v2: /' | tee -a "$summary"
# Each perf line with its share of the device peak: GB/s against the memory peak, TFLOP/s against the tensor peak
# (the first rate of a line is its headline).
grep -E "^perf:" "$work/ops.log" | awk -v gbs="$peak_gbs" -v tf="$peak_tf" '{
    pct = ""
    for (i = 1; i < NF && pct == ""; ++i) {
        if ($(i + 1) == "GB/s" && gbs > 0) pct = sprintf(" = %.0f%% of %d GB/s", 100 * $i / gbs, gbs)
        if ($(i + 1) == "TFLOP/s" && tf > 0) pct = sprintf(" = %.0f%% of %d TFLOP/s", 100 * $i / tf, tf)
    }
    print $0 pct
}' | tee -a "$summary"

# 0.5b:graphs-off: the same decode steps as direct kernel launches (CUDA graphs are on in every other run).
for run in 0.5b 0.5b:graphs-off 0.5b:q4 8b; do
    preset=${run%%:*} quant=${run#*:} graphs=on
    [ "$quant" = "$run" ] && quant=""
    [ "$quant" = graphs-off ] && quant="" graphs=off
    dir="$work/model-$preset"
    [ -f "$dir/config.json" ] || ./build-gpu/make-model "$preset" "$dir" > /dev/null || { note "make-model $preset: FAILED"; continue; }
    log="$work/bench-$preset$quant-graphs-$graphs.log"
    MINICPM_BACKEND=cuda MINICPM_CUDA_GRAPHS=$graphs timeout 150 ./build-gpu/bench-engine "$dir" 0 $quant | tee "$log"
    grep -E "^(backend|weights|prefill|decode)" "$log" | sed "s/^/bench $run: /" | tee -a "$summary"
done
note "total: $(($(date +%s) - t0)) s; ops exit code $ops_rc"
exit "$ops_rc"
