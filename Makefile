# Front door over CMake. `make` builds the native library and its tests into build/; `make lib` builds only
# libminicpm.so (what `npm run serve` needs: no tests, tools or static library, one line of output);
# `make test-native` runs the native tests (ctest); `make bench` runs the engine benchmark on a
# MiniCPM4-0.5B-shaped checkpoint kept in the cache directory, and the bf16 matmuls of one such layer per CPU
# kernel family against the peak of the instruction each issues (bench-kernels).
BUILD ?= build
JOBS  ?= $(shell nproc)
BUN   ?= node_modules/.bin/bun
# The same cache directory the runtime uses (src/runtime/default-model.ts): $MINICPM_CACHE, else ~/.cache.
CACHE ?= $(or $(MINICPM_CACHE),$(HOME)/.cache/minicpm-edge)
MAKEFLAGS += --no-print-directory

.PHONY: all native lib test-native bench dist clean

all: native

$(BUILD)/CMakeCache.txt:
	@command -v cmake >/dev/null || { echo "cmake is missing: install cmake >= 3.20 (Debian: apt-get install cmake)"; exit 1; }
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release > /dev/null

native: $(BUILD)/CMakeCache.txt
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release > /dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

# Only the shared library; its compiler output goes to build/lib.log and is shown only when the build fails.
lib: $(BUILD)/CMakeCache.txt
	@[ -f $(BUILD)/libminicpm.so ] || echo "building the engine into $(BUILD)/libminicpm.so (once; a few minutes on 2 cores)"
	@cmake --build $(BUILD) --target minicpm -j $(JOBS) -- --no-print-directory > $(BUILD)/lib.log 2>&1 \
		|| { cat $(BUILD)/lib.log; echo "engine build failed (log: $(BUILD)/lib.log)"; exit 1; }

test-native: native
	@cd $(BUILD) && ctest --output-on-failure

bench: native
	@echo "bench checkpoint: $(CACHE)/bench-0.5b (random weights, MiniCPM4-0.5B shapes, about 830 MiB)"
	@$(BUN) cli.ts make-checkpoint --preset 0.5b --out $(CACHE)/bench-0.5b --quiet-if-exists
	@$(BUILD)/bench-engine $(CACHE)/bench-0.5b
	@$(BUILD)/bench-kernels
	@$(BUILD)/bench-prefix $(CACHE)/bench-0.5b 2048
	@MINICPM_LIB=$(CURDIR)/$(BUILD)/libminicpm.so $(BUN) cli.ts bench --model $(CACHE)/bench-0.5b

# One self-contained executable: the CLI bundle with libminicpm.so embedded (found via Bun.embeddedFiles).
# .env and bunfig.toml of the directory it runs in are not read.
dist: lib
	@mkdir -p dist
	@$(BUN) build --compile --minify --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
		cli.ts src/runtime/text-worker-entry.ts $(BUILD)/libminicpm.so --outfile dist/minicpm-edge
	@echo "dist/minicpm-edge"

clean:
	rm -rf $(BUILD) build-arm64 dist
