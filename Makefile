# Front door over CMake. `make` builds the native library into build/; `make test-native` runs the native
# tests (ctest); `make bench` runs the engine benchmark on a MiniCPM4-0.5B-shaped checkpoint.
BUILD ?= build
JOBS  ?= $(shell nproc)
BUN   ?= node_modules/.bin/bun

.PHONY: all native test-native bench dist clean

all: native

native:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release > /dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test-native: native
	@cd $(BUILD) && ctest --output-on-failure

bench: native
	@$(BUN) cli.ts make-checkpoint --preset 0.5b --out .cache/bench-0.5b --quiet-if-exists
	@$(BUILD)/bench-engine .cache/bench-0.5b
	@$(BUILD)/bench-prefix .cache/bench-0.5b 2048
	@MINICPM_LIB=$(CURDIR)/$(BUILD)/libminicpm.so $(BUN) cli.ts bench --model .cache/bench-0.5b

# One self-contained executable: the CLI bundle with libminicpm.so embedded (found via Bun.embeddedFiles).
# .env and bunfig.toml of the directory it runs in are not read.
dist: native
	@mkdir -p dist
	@$(BUN) build --compile --minify --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
		cli.ts $(BUILD)/libminicpm.so --outfile dist/minicpm-edge
	@echo "dist/minicpm-edge"

clean:
	rm -rf $(BUILD) build-arm64 dist
