// make-model PRESET DIR: writes a random-weight checkpoint of a MiniCPM4 shape (config.json + safetensors, no
// tokenizer) with the native test writer, so that scripts/gpu-check.sh can benchmark on a machine that has
// only a compiler. PRESET: 0.5b or 8b (BF16).
// make-model eagle TARGET_DIR DIR: writes a random EAGLE head for the target in TARGET_DIR, in the published
// MiniCPM4-8B-Eagle-FRSpec layout (fc with bias, input_norm1/2, layers.0.*; model/eagle.h), for tests and
// benchmarks of speculative decoding.
// --bin (before PRESET or eagle): the weights as torch.save's pytorch_model.bin (tests/torch-bin.h) instead, as
// many published checkpoints and EAGLE heads ship.
#include "model/config.h"
#include "tests/tiny-model.h"

#include <cstdio>
#include <string>

static int make_eagle(const std::string & target_dir, const std::string & out, bool torch_bin) {
    const minicpm::model_config c =
        minicpm::parse_config(minicpm_test::read_file(target_dir + "/config.json"), target_dir + "/config.json");
    minicpm_test::tiny_model_spec t;  // what the head's config.json repeats from the target
    t.n_vocab = c.n_vocab;
    t.scale_depth = c.scale_depth;
    t.dim_model_base = c.dim_model_base;
    minicpm_test::tiny_eagle_spec e;
    e.n_embd = c.n_embd;
    e.n_head = c.n_head;
    e.n_head_kv = c.n_head_kv;
    e.n_ff = c.n_ff;
    e.rms_norm_eps = c.rms_norm_eps;
    if (c.n_embd / c.n_head != c.n_head_dim) {
        std::fprintf(stderr, "make-model: the target's head_dim %d is not hidden_size / num_attention_heads\n", c.n_head_dim);
        return 1;
    }
    std::filesystem::create_directories(out);
    minicpm_test::write_tiny_eagle(out, t, e, torch_bin);
    std::printf("wrote %s (EAGLE head for %s: hidden %d, %d heads, %d KV heads, ffn %d, random bf16 weights)\n",
                out.c_str(), target_dir.c_str(), e.n_embd, e.n_head, e.n_head_kv, e.n_ff);
    return 0;
}

int main(int argc, char ** argv) {
    const bool torch_bin = argc > 1 && std::string(argv[1]) == "--bin";
    if (torch_bin) --argc, ++argv;
    if (argc == 4 && std::string(argv[1]) == "eagle") {
        try {
            return make_eagle(argv[2], argv[3], torch_bin);
        } catch (const std::exception & e) {
            std::fprintf(stderr, "make-model: %s\n", e.what());
            return 1;
        }
    }
    if (argc != 3 || (std::string(argv[1]) != "0.5b" && std::string(argv[1]) != "8b")) {
        std::fprintf(stderr, "usage: make-model [--bin] 0.5b|8b DIR\n       make-model [--bin] eagle TARGET_DIR DIR\n");
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
    s.torch_bin = torch_bin;
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
