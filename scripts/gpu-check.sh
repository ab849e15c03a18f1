#!/usr/bin/env bash
# The GPU check (issue: CUDA backend), for a machine with an NVIDIA GPU and only a C++ compiler, nvcc and cmake:
# builds the CUDA backend for this GPU, runs every CUDA op against the CPU op and the model parity test
# (test-cuda: NMSE per op, split-K decode attention, the device sampler's greedy / chi-square / seed checks,
# packed q8/q4 GEMV, on sm_90 the wgmma bf16/f16 GEMM (start-up probe, parity vs CPU and mma.sync), the q8/q4
# tensor-core GEMM (mma.sync; GPTQ act-order from reordered copies, split-K on
# the 8B down projection, bit-identical repeats), the device arena, the engine sampling on the device,
# InfLLM v2 compression / block selection / sparse attention, token-tree rows of it and a sparse checkpoint,
# speculative decoding on it past dense_len against plain decoding, CUDA graph decode steps bit-identical to
# eager ones), then benchmarks GEMV (GB/s, bf16 / q8 / q4; bf16 on the 8B shapes), the tensor-core GEMMs
# (TFLOP/s: bf16 on the 0.5B and 8B prefill shapes at T = 512 / 2048, q8 / q4, q4 act-order; GB/s of weights:
# bf16 batched decode on the 8B shapes, q4 split-K), split-K attention, a sparse decode step dense vs sparse, a
# sparse verify tree vs the same rows as a causal chunk and the sampler, each against the
# device's peak where this script knows it, and the engine (prefill, decode at batch 1/8/32) on MiniCPM4-0.5B-
# and 8B-shaped random BF16 checkpoints (0.5B also q4, and also with CUDA graphs off); last, when time is left,
# compute-sanitizer over the small op sections. Everything is printed and the summary lines are written to $1
# (default gpu-check-summary.txt), its last line always the total.
#
# Time: the whole check keeps to GPU_CHECK_BUDGET seconds (default 480: one 10-minute call of a lent machine,
# with room to start it). Every step runs under `timeout` with what the budget has left, and test-cuda kills
# a section that runs past 120 s, so one hang costs one step, never the lease. The 8B checkpoint (16 GB of
# bf16, written by one thread) is generated in the background while test-cuda runs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
summary=$(realpath -m "${1:-gpu-check-summary.txt}")
work=${GPU_CHECK_DIR:-/tmp/minicpm-gpu-check}
budget=${GPU_CHECK_BUDGET:-480}
mkdir -p "$work" "$(dirname "$summary")"
: > "$summary"
start=$(date +%s)
failed=""
note() { echo "$*" | tee -a "$summary"; }
fail_step() {
    failed="$failed $1"
    note "$1: FAILED${2:+ ($2)}"
}
# Seconds a step may take: its own cap, or what the budget has left if that is less (never under 10).
cap() {
    local left=$((budget - ($(date +%s) - start)))
    [ "$1" -lt "$left" ] && left=$1
    [ "$left" -lt 10 ] && left=10
    echo "$left"
}
finish() {
    note "total: $(($(date +%s) - start)) s of a ${budget} s budget; ${failed:+FAILED:}${failed:-every step ok}"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---- the machine: GPU, driver, toolkit. nvcc is often installed but not on PATH.
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
gpu_name="" compute_cap="" driver_cuda=""
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -4 |
        sed 's/^/gpu: /' | tee -a "$summary"
    gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)
    compute_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d ' .')
    driver_cuda=$(nvidia-smi 2> /dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
else
    note "gpu: nvidia-smi not found"
fi
nvcc_ver=$(nvcc --version 2> /dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p')
cmake_ver=$(cmake --version 2> /dev/null | awk 'NR == 1 { print $3 }')
note "toolkit: nvcc ${nvcc_ver:-not found}, cmake ${cmake_ver:-not found}, $(nproc) cores; the driver runs CUDA ${driver_cuda:-?}"
# A statically linked CUDA runtime newer than the driver fails at the first call (cudaErrorInsufficientDriver).
if [ -n "$nvcc_ver" ] && [ -n "$driver_cuda" ] && [ "${nvcc_ver%%.*}" -gt "${driver_cuda%%.*}" ]; then
    note "WARNING: nvcc $nvcc_ver is newer than the driver's CUDA $driver_cuda: its programs cannot run here"
fi
# Datasheet peaks: HBM/GDDR GB/s and dense BF16 tensor TFLOP/s (f32 accumulation), by GPU name.
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
note "peak: ${peak_gbs} GB/s, ${peak_tf} TFLOP/s dense bf16 (0 = this script does not know '$gpu_name')"

# ---- build for this GPU only: its compute capability from nvidia-smi; else `native` (CMake >= 3.24); else the
# CMakeLists default (five architectures: a much longer build).
arch=""
if [ -n "$compute_cap" ]; then
    arch="${compute_cap}-real"
elif [ -n "$cmake_ver" ] && [ "$(printf '%s\n' 3.24 "$cmake_ver" | sort -V | head -1)" = 3.24 ]; then
    arch=native
fi
t0=$(date +%s)
if timeout "$(cap 360)" cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release ${arch:+-DCMAKE_CUDA_ARCHITECTURES=$arch} \
    > "$work/cmake.log" 2>&1 &&
    timeout "$(cap 360)" cmake --build build-gpu -j "$(nproc)" --target test-cuda bench-engine make-model \
        > "$work/build.log" 2>&1; then
    note "build: ok in $(($(date +%s) - t0)) s (CUDA architectures ${arch:-the CMakeLists default})"
else
    tail -40 "$work/cmake.log" "$work/build.log"
    fail_step build "after $(($(date +%s) - t0)) s; logs in $work"
    exit 1
fi
if grep -q "CUDA backend skipped" "$work/cmake.log"; then
    fail_step build "CMake found no nvcc: the CUDA backend was not built"
    exit 1
fi

# ---- checkpoints, written in the background while the op tests run. A finished one is marked, so that a
# killed run does not leave a half-written checkpoint that a later run would take for whole.
make_model() {  # preset dir seconds
    [ -f "$2/complete" ] && return 0
    rm -rf "$2"
    timeout "$3" ./build-gpu/make-model "$1" "$2" > "$2.log" 2>&1 && touch "$2/complete"
}
free_gb=$(df -Pk "$work" | awk 'NR == 2 { print int($4 / 1048576) }')
make_model 0.5b "$work/model-0.5b" "$(cap 120)" &
gen_05b=$!
gen_8b=""
if [ "$free_gb" -ge 24 ] || [ -f "$work/model-8b/complete" ]; then
    make_model 8b "$work/model-8b" "$(cap 300)" &
    gen_8b=$!
else
    note "model 8b: not generated: ${free_gb} GB free in $work (16 GB needed, 24 asked)"
fi

# ---- every CUDA op against the CPU op, then the op benchmarks (test-cuda --perf).
timeout "$(cap 330)" ./build-gpu/test-cuda --perf --timeout 120 2>&1 | tee "$work/ops.log"
ops_rc=${PIPESTATUS[0]}
grep -E "^(ok|FAIL)" "$work/ops.log" | awk '{print $1}' | sort | uniq -c | sed 's/^ */ops: /' | tee -a "$summary"
grep -E "^FAIL" "$work/ops.log" | tee -a "$summary"
grep -E "^(section|backend|SKIPPED)" "$work/ops.log" | tee -a "$summary"
grep -E "model logits|engine|sample|arena|graph|spec sparse|(q-gemm|mma gemm).*(LM head|FAIL)" "$work/ops.log" |
    grep -v -E "^(perf:|section)" | tee -a "$summary"
# sm_90: the wgmma GEMM's start-up probe and its checks (parity vs the CPU op, vs mma.sync), or why skipped.
grep -E "^(SKIP gemm-sm90|gemm-sm90:)|^(ok|FAIL) +(gemm-sm90|.*wgmma)" "$work/ops.log" | tee -a "$summary"
# bf16 / f16 tensor-core GEMM: ok / FAIL over its parity cases and split-K repeats.
grep -E "^(ok|FAIL) +matmul (bf16|f16) .*mma gemm" "$work/ops.log" | awk '{print $1, "bf16/f16 gemm"}' | sort | uniq -c |
    sed 's/^ */16-bit matmul: /' | tee -a "$summary"
# Quantized matmul: ok / FAIL for GPTQ act-order (parity, g_idx refusals) and split-K (parity, repeats).
grep -E "^(ok|FAIL) +(matmul act-order|act-order g_idx|matmul q4 g_idx|matmul split-K)" "$work/ops.log" |
    awk '{print $1, ($3 == "split-K" ? "split-K" : "act-order")}' | sort | uniq -c | sed 's/^ */quantized matmul: /' |
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
case $ops_rc in
    0) ;;
    77) fail_step ops "test-cuda found no usable CUDA device on a GPU machine: see its SKIPPED line" ;;
    124) fail_step ops "test-cuda ran past its time and was killed" ;;
    *) fail_step ops "test-cuda exit code $ops_rc" ;;
esac

# ---- the engine on the checkpoints. 0.5b:graphs-off: the same decode steps as direct kernel launches (CUDA
# graphs are on in every other run). The decode roofline is against the device's memory peak: the bytes one
# batch-1 step reads (bench-engine's own roofline lines are against the host's memory and are left out).
wait "$gen_05b" || fail_step "make-model 0.5b" "$(tail -1 "$work/model-0.5b.log")"
for run in 0.5b 0.5b:graphs-off 0.5b:q4 8b; do
    preset=${run%%:*} quant=${run#*:} graphs=on
    [ "$quant" = "$run" ] && quant=""
    [ "$quant" = graphs-off ] && quant="" graphs=off
    dir="$work/model-$preset"
    if [ "$preset" = 8b ]; then
        [ -n "$gen_8b" ] || continue
        wait "$gen_8b" || { fail_step "make-model 8b" "$(tail -1 "$work/model-8b.log" 2> /dev/null)"; continue; }
    fi
    [ -f "$dir/complete" ] || continue
    log="$work/bench-$preset$quant-graphs-$graphs.log"
    # shellcheck disable=SC2086 # no quantization: no argument
    MINICPM_BACKEND=cuda MINICPM_CUDA_GRAPHS=$graphs timeout "$(cap 150)" ./build-gpu/bench-engine "$dir" 0 $quant 2>&1 |
        tee "$log"
    bench_rc=${PIPESTATUS[0]}
    grep -E "^(backend|prefill|decode)" "$log" | sed "s/^/bench $run: /" | tee -a "$summary"
    grep -E "^weights" "$log" | sed "s/; decode roofline.*//; s/^/bench $run: /" | tee -a "$summary"
    step_mb=$(sed -n 's/^bytes read per decode step: \([0-9.]*\) MB.*/\1/p' "$log")
    tok1=$(sed -n 's/^decode batch 1: \([0-9.]*\) tok\/s.*/\1/p' "$log")
    if [ -n "$step_mb" ] && [ -n "$tok1" ]; then
        awk -v run="$run" -v mb="$step_mb" -v t="$tok1" -v peak="$peak_gbs" 'BEGIN {
            gbs = mb * t / 1000
            printf "bench %s: decode batch 1 reads %.0f GB/s (%.1f MB a step)", run, gbs, mb
            if (peak > 0) printf " = %.0f%% of %d GB/s", 100 * gbs / peak, peak
            printf "\n"
        }' | tee -a "$summary"
    fi
    [ "$bench_rc" -eq 0 ] || fail_step "bench $run" "exit code $bench_rc$([ "$bench_rc" -eq 124 ] && echo ': timed out')"
done

# ---- compute-sanitizer, in test-cuda's own process (--in-process: no forked children for the tool to follow)
# and with the arena off (MINICPM_CUDA_ARENA=off: one allocation per buffer, so that an access past a buffer is
# past an allocation): memcheck over the sections that died of a CUDA error or a signal above (it names the
# kernel and the address), else over the small op sections; racecheck (shared-memory hazards) over attention.
# Only when the budget has the time; a finding (exit code 9) fails the check.
faulted=$(sed -n 's/^FAIL section \([a-z-]*\): \(cuda:\|died of signal\).*/\1/p' "$work/ops.log" | sort -u | tr '\n' ' ')
if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
        if [ $((budget - ($(date +%s) - start))) -lt 90 ]; then
            note "sanitizer $tool: not run (under 90 s of the budget left)"
            continue
        fi
        sections=${faulted:-elementwise attention}
        [ "$tool" = racecheck ] && sections="attention"
        t0=$(date +%s)
        # shellcheck disable=SC2086 # the section names are words
        MINICPM_CUDA_ARENA=off timeout "$(cap 120)" compute-sanitizer --tool "$tool" --error-exitcode 9 \
            ./build-gpu/test-cuda --in-process $sections > "$work/$tool.log" 2>&1
        rc=$?
        note "sanitizer $tool (${sections% }): exit code $rc in $(($(date +%s) - t0)) s (9: findings; 1: test failures under the tool)"
        grep -E "^========= +[A-Z]+ SUMMARY" "$work/$tool.log" | tee -a "$summary"
        grep -v "SUMMARY" "$work/$tool.log" | grep -m 8 -E "^========= +(Invalid|Error|Warning|Race|Program hit|Hazard)" |
            tee -a "$summary"
        case $rc in
            9) fail_step "sanitizer $tool" "log in $work/$tool.log" ;;
            124) fail_step "sanitizer $tool" "timed out" ;;
        esac
    done
else
    note "sanitizer: compute-sanitizer not found"
fi
[ -z "$failed" ]
