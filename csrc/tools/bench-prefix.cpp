// bench-prefix MODEL_DIR [n_ctx] [n_threads]: time to first token of a multi-turn conversation with and without
// the prefix cache, through the public engine API. Turn 1 sends a prompt of n_ctx - 160 tokens and generates 16;
// turn 2 resends it with the reply and a 64-token user turn (about n_ctx - 80 tokens). With the cache, turn 2
// prefills only what follows the last whole cached block; without it, everything. Best of 3 per configuration.
#include "minicpm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void die(const char * what, int32_t status) {
    char msg[512];
    minicpm_last_error(msg, sizeof(msg));
    std::fprintf(stderr, "bench-prefix: %s failed: %s (%s)\n", what, minicpm_status_name(status), msg);
    std::exit(1);
}

std::vector<int32_t> words(int32_t n, int32_t n_vocab, uint32_t seed) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((seed * 2654435761u + uint32_t(i) * 40503u) % 30000u + 100u) % n_vocab;
    return t;
}

struct outcome {
    double               ttft_ms = 0;
    int32_t              n_cached = 0;
    std::vector<int32_t> tokens;
};

outcome run(minicpm_engine_t * e, const std::vector<int32_t> & prompt, int32_t n_gen) {
    minicpm_sampling_params sp;
    minicpm_sampling_default_params(&sp);
    sp.temperature = 0;
    sp.n_max_tokens = n_gen;
    sp.ignore_eos = 1;
    uint64_t id = 0;
    int32_t  rc = minicpm_engine_submit(e, prompt.data(), int32_t(prompt.size()), &sp, nullptr, 0, nullptr, nullptr, 0, &id);
    if (rc != MINICPM_STATUS_OK) die("submit", rc);
    outcome              o;
    minicpm_request_info info{};
    info.size = sizeof(info);
    minicpm_event ev[32];
    for (bool done = false; !done;) {
        // Read the info before draining: the finish event releases the request.
        minicpm_engine_request_info(e, id, &info);
        const int32_t n = minicpm_engine_drain(e, id, ev, 32);
        if (n < 0) die("drain", n);
        for (int32_t i = 0; i < n; ++i) {
            if (ev[i].token >= 0) o.tokens.push_back(ev[i].token);
            done = done || ev[i].finish_reason != MINICPM_FINISH_NONE;
        }
        if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    o.ttft_ms = double(info.t_first_token_us - info.t_submit_us) / 1000.0;
    o.n_cached = info.n_cached;
    return o;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench-prefix MODEL_DIR [n_ctx=2048] [n_threads]\n");
        return 2;
    }
    const int32_t n_ctx = argc > 2 ? std::atoi(argv[2]) : 2048;
    const int32_t n_threads = argc > 3 ? std::atoi(argv[3]) : 0;
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    minicpm_model_t * model = nullptr;
    int32_t rc = minicpm_model_load(argv[1], &mp, &model);
    if (rc != MINICPM_STATUS_OK) die("model_load", rc);
    struct minicpm_model_info info = {};
    info.size = sizeof(info);
    minicpm_model_info(model, &info);

    const int32_t n_gen = 16;
    const std::vector<int32_t> turn1 = words(n_ctx - 160, info.n_vocab, 1);
    const std::vector<int32_t> user2 = words(64, info.n_vocab, 2);
    double  best[2] = {1e30, 1e30};
    double  first[2] = {0, 0};
    int32_t cached[2] = {0, 0};
    size_t  n_turn2 = 0;
    bool    same = true;
    std::vector<int32_t> reply_ref;
    for (int rep = 0; rep < 3; ++rep) {
        for (int on = 1; on >= 0; --on) {  // a fresh engine each time: nothing cached across repetitions
            minicpm_engine_params ep;
            minicpm_engine_default_params(&ep);
            ep.n_threads = n_threads;
            ep.n_ctx = n_ctx;
            ep.n_batch_max = 4;
            ep.prefix_cache = uint8_t(on);
            minicpm_engine_t * e = nullptr;
            rc = minicpm_engine_init(model, &ep, &e);
            if (rc != MINICPM_STATUS_OK) die("engine_init", rc);
            const outcome a = run(e, turn1, n_gen);
            std::vector<int32_t> turn2 = turn1;
            turn2.insert(turn2.end(), a.tokens.begin(), a.tokens.end());
            turn2.insert(turn2.end(), user2.begin(), user2.end());
            n_turn2 = turn2.size();
            const outcome b = run(e, turn2, n_gen);
            if (reply_ref.empty()) reply_ref = b.tokens;
            same = same && b.tokens == reply_ref;
            best[on] = std::min(best[on], b.ttft_ms);
            first[on] = a.ttft_ms;
            cached[on] = b.n_cached;
            minicpm_engine_free(e);
        }
    }
    std::printf("model %s: %d layers, n_embd %d, KV bf16; turn 1 %zu tokens (TTFT %.0f ms), turn 2 %zu tokens\n", argv[1],
                info.n_layer, info.n_embd, turn1.size(), first[0], n_turn2);
    std::printf("turn 2 TTFT without prefix cache: %.1f ms (cached_tokens %d)\n", best[0], cached[0]);
    std::printf("turn 2 TTFT with prefix cache:    %.1f ms (cached_tokens %d)\n", best[1], cached[1]);
    std::printf("TTFT drop: %.1fx (%.0f ms saved); turn-2 greedy replies equal across all runs: %s\n",
                best[0] / best[1], best[0] - best[1], same ? "yes" : "no (the fast kernels round by batch shape)");
    minicpm_model_free(model);
    return 0;
}
