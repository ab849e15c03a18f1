#!/usr/bin/env bash
# The project's test command (`npm test`): builds the native library, runs the native tests (ctest), the
# TypeScript type check and the Bun suite, and ends with one line "N passed, N failed, N skipped" over all three.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! make native; then
    echo "native build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

logs=$(mktemp -d)
(cd build && ctest --output-on-failure 2>&1) | tee "$logs/native.log"
native_rc=${PIPESTATUS[0]}

# The model and engine tests again with every other CPU kernel family this machine runs forced in turn
# (MINICPM_KERNELS; test-ops already runs every family op by op). $1: build dir; $2: command prefix (emulator).
forced_families() {
    local dir=$1 emu=$2 best fam
    best=$(cd "$dir" && $emu ./test-ops --list-families | head -n 1)
    for fam in $(cd "$dir" && $emu ./test-ops --list-families); do
        [ "$fam" = "$best" ] && continue
        echo "kernel family $fam forced (MINICPM_KERNELS=$fam):"
        (cd "$dir" && MINICPM_KERNELS=$fam ctest --output-on-failure -R '^test-(model|engine)$' 2>&1) |
            tee -a "$logs/native.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || native_rc=1
    done
}
forced_families build ""

# The ARM64 kernels: the same native tests cross-built for ARM64 and run under qemu-user. Its default CPU
# ('max') has DotProd, BF16 and I8MM, so every ARM64 family and quantized kernel runs there; then the kernel tests
# again on CPU models without them, so that detection picks the smaller families by itself (hwcaps):
# cortex-a76 (DotProd: neon+dotprod, the sdot kernel) and cortex-a72 (plain NEON: neon, the smull kernel).
arm_skipped=0
if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
    echo "ARM64 (NEON, DotProd, BF16, I8MM and portable kernels, under qemu-aarch64):"
    if cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release -DMINICPM_CUDA=OFF \
            > /dev/null && cmake --build build-arm64 -j "$(nproc)" > "$logs/arm64-build.log" 2>&1; then
        (cd build-arm64 && ctest --output-on-failure 2>&1) | tee -a "$logs/native.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || native_rc=1
        forced_families build-arm64 "qemu-aarch64 -L /usr/aarch64-linux-gnu"
        for cpu_best in cortex-a76:neon+dotprod cortex-a72:neon; do
            cpu=${cpu_best%%:*} want=${cpu_best#*:}
            best=$(cd build-arm64 && QEMU_CPU=$cpu qemu-aarch64 -L /usr/aarch64-linux-gnu ./test-ops --list-families | head -n 1)
            echo "QEMU_CPU=$cpu: best kernel family '$best' (want '$want')"
            [ "$best" = "$want" ] || { echo "FAIL: ARM64 kernel family detection on $cpu"; native_rc=1; }
            (cd build-arm64 && QEMU_CPU=$cpu ctest --output-on-failure -R '^test-(ops|qmatmul)$' 2>&1) |
                tee -a "$logs/native.log"
            [ "${PIPESTATUS[0]}" -eq 0 ] || native_rc=1
        done
    else
        cat "$logs/arm64-build.log"
        echo "ARM64 build failed"
        native_rc=1
    fi
else
    echo "SKIPPED: ARM64 native tests (install g++-aarch64-linux-gnu and qemu-user to run them)"
    arm_skipped=1
fi
# The type check counts as one test: tsconfig.json is strict, and bun itself runs code with type errors.
echo "TypeScript (tsc --noEmit -p .):"
if node_modules/.bin/tsc --noEmit -p .; then tsc_pass=1; tsc_fail=0; else tsc_pass=0; tsc_fail=1; fi
node_modules/.bin/bun test "$@" 2>&1 | tee "$logs/bun.log"
bun_rc=${PIPESTATUS[0]}

# ctest: "100% tests passed, 0 tests failed out of 7"; bun: " 12 pass", " 0 fail", " 3 skip".
n_total=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\2/p' "$logs/native.log" | awk '{ s += $1 } END { print s + 0 }')
n_failed=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of ([0-9]+).*/\1/p' "$logs/native.log" | awk '{ s += $1 } END { print s + 0 }')
b_pass=$(sed -nE 's/^ *([0-9]+) pass$/\1/p' "$logs/bun.log" | tail -n 1)
b_fail=$(sed -nE 's/^ *([0-9]+) fail$/\1/p' "$logs/bun.log" | tail -n 1)
b_skip=$(sed -nE 's/^ *([0-9]+) skip$/\1/p' "$logs/bun.log" | tail -n 1)
# ctest counts a test that exits 77 (SKIP_RETURN_CODE: no GPU here) among the passed; report it as skipped.
n_skip=$(grep -c '(Skipped)$' "$logs/native.log")
n_total=${n_total:-0}; n_failed=${n_failed:-0}; b_pass=${b_pass:-0}; b_fail=${b_fail:-0}; b_skip=${b_skip:-0}
n_total=$((n_total - n_skip))

passed=$((n_total - n_failed + tsc_pass + b_pass))
failed=$((n_failed + tsc_fail + b_fail))
# A runner that crashed or printed no summary counts as a failure rather than silently as zero tests.
if [ "$native_rc" -ne 0 ] && [ "$n_failed" -eq 0 ]; then failed=$((failed + 1)); fi
if [ "$bun_rc" -ne 0 ] && [ "$b_fail" -eq 0 ]; then failed=$((failed + 1)); fi
rm -rf "$logs"
echo "native: $((n_total - n_failed)) passed, $n_failed failed, $((n_skip + arm_skipped)) skipped; tsc: $tsc_pass passed, $tsc_fail failed;" \
    "bun: $b_pass passed, $b_fail failed, $b_skip skipped"
echo "$passed passed, $failed failed, $((b_skip + n_skip + arm_skipped)) skipped"
[ "$failed" -eq 0 ]
