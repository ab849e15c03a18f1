// Speculative decoding on an InfLLM v2 target past dense_len (token trees through the sparse op, each tree row
// selecting blocks as plain decoding would after committing its ancestors; cpu/ops-sparse.h). A generated
// sparse checkpoint with dense_len 200, a batch of mixed sequences that start below it, cross it or start past
// it, reference ops (batch composition cannot change a bit of the logits). Every drafter is wrapped so that it
// drafts greedy trees for sampled requests too (token matching against the target's own draws): the output of
// every request, greedy or sampled, must then equal plain decoding token for token. Drafters: the EAGLE head
// (random, weak), a plain weak draft model, and the target itself (every drafted level accepted).
#include "engine/drafter.h"
#include "engine/eagle-drafter.h"
#include "engine/scheduler.h"
#include "minicpm.h"
#include "model/eagle.h"
#include "tests/spec-requests.h"
#include "tests/tiny-model.h"

#include <chrono>
#include <filesystem>
#include <functional>

using minicpm::scheduler;
using minicpm_test::counting_drafter;
using minicpm_test::greedy;
using minicpm_test::prompt_of;
using minicpm_test::run_all;
using req = minicpm_test::spec_request;
using minicpm_test::reference_ops;

namespace {

constexpr int32_t k_dense_len = 200;
const minicpm::model * g_model = nullptr;

minicpm_engine_params engine_params() {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_chunk = 64;
    p.n_ctx = 384;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.kv_bytes = uint64_t(64) * minicpm::kv_pool::bytes_per_block(g_model->config(), minicpm::dtype::f32);
    return p;
}

minicpm_sampling_params hot(int32_t n_max_tokens, uint64_t seed) {
    minicpm_sampling_params s = greedy(n_max_tokens);
    s.temperature = 0.8f;
    s.top_p = 0.9f;
    s.seed = seed;
    return s;
}

// Crossing dense_len while generating, starting past it, staying below it; greedy and sampled.
std::vector<req> mixed_requests(bool sampled) {
    std::vector<req> r = {{prompt_of(190, 1), greedy(100)},
                          {prompt_of(230, 2), greedy(60)},
                          {prompt_of(120, 3), sampled ? hot(110, 7) : greedy(110)},
                          {prompt_of(40, 4), greedy(50)},
                          {prompt_of(175, 5), sampled ? hot(90, 99) : greedy(90)}};
    return r;
}

using make_drafter = std::function<std::shared_ptr<minicpm::drafter>(scheduler &)>;

// expect_all: every drafted level must be accepted (the target drafting for itself, greedy).
void check_arm(const char * label, const minicpm::tree_shape & shape, const make_drafter & make, bool sampled,
               bool expect_all) {
    const std::vector<req> reqs = mixed_requests(sampled);
    static std::vector<std::vector<int32_t>> plain_of[2];  // plain decoding, once per request set
    std::vector<std::vector<int32_t>> & plain = plain_of[sampled], spec;
    if (plain.empty()) {
        scheduler s(*g_model, engine_params(), reference_ops());
        plain = run_all(s, reqs);
    }
    scheduler s(*g_model, engine_params(), reference_ops());
    auto      d = std::make_shared<counting_drafter>(make(s), k_dense_len);
    s.set_drafter(d, shape.tree_size - 1);
    const auto t0 = std::chrono::steady_clock::now();
    spec = run_all(s, reqs);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    struct minicpm_engine_stats st{};
    s.stats(st);
    int64_t total = 0, past = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
        total += int64_t(plain[i].size());
        past += std::max<int64_t>(0, int64_t(reqs[i].prompt.size() + plain[i].size()) - k_dense_len);
    }
    const double mean_accept =
        st.n_spec_verifies ? double(st.n_spec_accepted + st.n_spec_verifies) / double(st.n_spec_verifies) : 0.0;
    std::string per_depth;
    for (int32_t k = 0; k < shape.num_iter && k < MINICPM_SPEC_MAX_DEPTH; ++k) {
        char b[32];
        std::snprintf(b, sizeof(b), " %.2f",
                      st.n_spec_verifies ? double(st.n_spec_at_depth[k]) / double(st.n_spec_verifies) : 0.0);
        per_depth += b;
    }
    CHECK(spec == plain && d->n_past_dense > 0 && st.kv_tokens_used == 0,
          "%s (tree %d/%d/%d, %s): output == plain for %lld tokens in %zu requests (%lld of them past dense_len "
          "%d); %lld trees, %lld reaching past dense_len; %llu verifies, mean accept length %.2f, per-depth "
          "acceptance%s; %.0f ms",
          label, shape.num_iter, shape.top_k, shape.tree_size, sampled ? "greedy x3 + sampled x2" : "greedy x5",
          (long long) total, reqs.size(), (long long) past, k_dense_len, (long long) d->n_trees,
          (long long) d->n_past_dense, (unsigned long long) st.n_spec_verifies, mean_accept, per_depth.c_str(), ms);
    if (expect_all)
        CHECK(int64_t(st.n_spec_accepted) == d->sum_depth && d->n_trees == int64_t(st.n_spec_verifies),
              "%s: every drafted level accepted: %llu drafts kept == %lld tree depths summed over %lld trees",
              label, (unsigned long long) st.n_spec_accepted, (long long) d->sum_depth, (long long) d->n_trees);
}

}  // namespace

int main() {
    const std::string dir = minicpm_test::make_temp_dir("spec-sparse");
    for (const char * sub : {"/target", "/head", "/weak"}) std::filesystem::create_directories(dir + sub);
    const minicpm_test::tiny_model_spec spec = minicpm_test::spec_target();
    minicpm_test::write_tiny_model(dir + "/target", spec);
    // window 128 = 2 local blocks, topk 2 (the init block and one scored): past 256 slots the selection leaves
    // blocks out.
    minicpm_test::add_sparse_config(dir + "/target", 128, 2, k_dense_len);
    minicpm_test::tiny_eagle_spec e;
    e.n_embd = 256, e.n_head = 16, e.n_head_kv = 2, e.n_ff = 256;
    minicpm_test::write_tiny_eagle(dir + "/head", spec, e);
    minicpm_test::tiny_model_spec weak = spec;
    weak.seed = 777;
    weak.n_layer = 1;
    minicpm_test::write_tiny_model(dir + "/weak", weak);
    try {
        std::unique_ptr<minicpm::model> target = minicpm::model::load(dir + "/target", true, MINICPM_BACKEND_CPU);
        std::unique_ptr<minicpm::model> weak_model = minicpm::model::load(dir + "/weak", true, MINICPM_BACKEND_CPU);
        g_model = target.get();
        CHECK(target->config().sparse.enabled && target->config().sparse.dense_len == k_dense_len,
              "generated target runs InfLLM v2 (dense_len %d)", target->config().sparse.dense_len);
        const minicpm::tree_shape cpmcu;  // CPM.cu CLI defaults 2 / 10 / 12
        const minicpm::tree_shape deep{4, 4, 16};
        auto eagle = [&](const minicpm::tree_shape & shape) {
            return [&, shape](scheduler & s) -> std::shared_ptr<minicpm::drafter> {
                return std::make_shared<minicpm::eagle_drafter>(minicpm::eagle_head::load(dir + "/head", *target, true),
                                                                s.backend_ref(), minicpm::dtype::f32, 64, shape);
            };
        };
        auto model_draft = [&](const minicpm::model & m, const minicpm::tree_shape & shape) {
            return [&, shape](scheduler & s) -> std::shared_ptr<minicpm::drafter> {
                return std::make_shared<minicpm::model_drafter>(m, target->config().n_vocab, s.backend_ref(),
                                                                minicpm::dtype::f32, 96, shape);
            };
        };
        check_arm("EAGLE head (random)", cpmcu, eagle(cpmcu), true, false);
        check_arm("weak draft model", cpmcu, model_draft(*weak_model, cpmcu), true, false);
        check_arm("target as drafter", deep, model_draft(*target, deep), false, true);
    } catch (const std::exception & ex) {
        CHECK(false, "unexpected exception: %s", ex.what());
    }
    minicpm_test::remove_dir(dir);
    return minicpm_test::finish();
}
