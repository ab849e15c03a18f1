// make-model PRESET DIR: writes a random-weight checkpoint of a MiniCPM4 shape (config.json + safetensors, no
// tokenizer) with the native test writer, so that scripts/gpu-check.sh can benchmark on a machine that has
// only a compiler. PRESET: 0.5b or 8b (BF16).
#include "tests/tiny-model.h"

#include <cstdio>
#include <string>

int main(int argc, char ** argv) {
    if (argc != 3 || (std::string(argv[1]) != "0.5b" && std::string(argv[1]) != "8b")) {
        std::fprintf(stderr, "usage: make-model 0.5b|8b DIR\n");
        return 2;
    }
    minicpm_test::tiny_model_spec s;
    const bool big = std::string(argv[1]) == "8b";
    s.n_vocab = 73448;
    s.n_embd = big ? 4096 : 1024;
    s.n_layer = big ? 32 : 24;
    s.n_head = big ? 32 : 16;
    s.n_head_kv = 2;
    s.n_ff = big ? 16384 : 4096;
    s.n_ctx_train = 32768;
    s.dim_model_base = 256;
    s.tie_word_embeddings = !big;
    s.longrope = false;
    s.eos_token_ids = {2, 73440};
    try {
        std::filesystem::create_directories(argv[2]);
        minicpm_test::write_tiny_model(argv[2], s);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "make-model: %s\n", e.what());
        return 1;
    }
    std::printf("wrote %s (%s shape, random bf16 weights)\n", argv[2], argv[1]);
    return 0;
}
