#!/usr/bin/env bash
# Side-by-side CPU speed of the engine's quantized weights and llama.cpp's on one MiniCPM4-0.5B-shaped random
# checkpoint (the one `make bench` uses): our q8 / q4 (on-the-fly, group 32 = llama.cpp's Q8_0 / Q4_0 block, and
# the default group 128) and BF16, against llama-bench on Q8_0, Q4_0 (--pure: every tensor Q4_0) and BF16 GGUFs
# made from the same checkpoint. Ours and llama.cpp for one width take turns inside one section that holds the
# shared benchmark lock (/tmp/minicpm-bench.lock), so they see the same background load; only ratios inside one
# section mean anything on a shared machine. Prints the load average with every section.
#
# Usage: scripts/bench-quant-peer.sh [ROUNDS]      (default 1; a round is three locked sections of ~100 s)
# Env:   LLAMA_BIN  llama.cpp's build/bin (llama-bench, llama-quantize), built by ../shared/tools/llama-peer.sh;
#                   default /tmp/llama-peer-kernels/build/bin
#        TO_GGUF    the checkpoint converter, default ../shared/tools/to_gguf.py
#        WORK       where the GGUFs are written (about 1.6 GB; delete when done), default /tmp/quant-peer
#        THREADS    default 2
# Ours: build/bench-engine (prefill = 512-token prompt, best of 5; decode = best step of 12 at batch 1, 8, 32).
# llama.cpp: llama-bench -p 512 -n 128 -r 3: the mean and the best of 3 runs. Ours: the best prefill of 5 and
# the best single decode step of 12, plus the mean over 128 consecutive batch-1 steps (like tg128).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
LLAMA_BIN=${LLAMA_BIN:-/tmp/llama-peer-kernels/build/bin}
TO_GGUF=${TO_GGUF:-../shared/tools/to_gguf.py}
WORK=${WORK:-/tmp/quant-peer}
THREADS=${THREADS:-2}
CACHE=${MINICPM_CACHE:-$HOME/.cache/minicpm-edge}
CKPT=$CACHE/bench-0.5b

[ -x build/bench-engine ] || { echo "build/bench-engine is missing: run make native first" >&2; exit 1; }
[ -x "$LLAMA_BIN/llama-bench" ] || { echo "no llama-bench in $LLAMA_BIN (see ../shared/tools/llama-peer.sh)" >&2; exit 1; }
[ -f "$CKPT/model.safetensors" ] || node_modules/.bin/bun cli.ts make-checkpoint --preset 0.5b --out "$CKPT" --quiet-if-exists
mkdir -p "$WORK"
[ -f "$WORK/bf16.gguf" ] || python3 "$TO_GGUF" "$CKPT" "$WORK/bf16.gguf" --type bf16
[ -f "$WORK/q8_0.gguf" ] || "$LLAMA_BIN/llama-quantize" "$WORK/bf16.gguf" "$WORK/q8_0.gguf" Q8_0 > "$WORK/quantize.log" 2>&1
[ -f "$WORK/q4_0.gguf" ] || "$LLAMA_BIN/llama-quantize" --pure "$WORK/bf16.gguf" "$WORK/q4_0.gguf" Q4_0 >> "$WORK/quantize.log" 2>&1

ours() {  # $1 = q8 | q4 | bf16, $2 = group
    local q=$1 g=$2
    [ "$q" = bf16 ] && q="" && g=""
    ./build/bench-engine "$CKPT" "$THREADS" $q $g 2>&1 |
        grep -E "^(kernels|memory read|weights|prefill|decode batch|batch-1 roofline)" | sed "s/^/ours $1${2:+ g$2}: /"
}
llama() {  # $1 = gguf name; prints the mean and the best of the 3 runs
    "$LLAMA_BIN/llama-bench" -m "$WORK/$1.gguf" -t "$THREADS" -p 512 -n 128 -r 3 -o json 2>/dev/null | python3 -c "
import json, sys
for r in json.load(sys.stdin):
    name = ('pp%d' % r['n_prompt']) if r['n_prompt'] else ('tg%d' % r['n_gen'])
    print('llama $1: %s %.1f tok/s mean (sd %.1f), best run %.1f' % (name, r['avg_ts'], r['stddev_ts'], max(r['samples_ts'])))"
}

# One locked section per weight width (about 100 s each), so that a locked run stays short.
section() {
    flock /tmp/minicpm-bench.lock bash -c "
        echo \"--- round $1, \$(date -u +%H:%M:%S) UTC, load \$(cut -d' ' -f1-3 /proc/loadavg) on \$(nproc) cpus\"
        $(declare -f ours llama)
        CKPT='$CKPT' THREADS=$THREADS LLAMA_BIN='$LLAMA_BIN' WORK='$WORK'
        $2
        echo \"--- load after: \$(cut -d' ' -f1-3 /proc/loadavg)\""
}
for r in $(seq 1 "$ROUNDS"); do
    section "$r" "ours q8 32; llama q8_0; ours q8 128"
    section "$r" "ours q4 32; llama q4_0; ours q4 128"
    section "$r" "ours bf16 ''; llama bf16"
done
