// The minicpm_engine_* and minicpm_sampling_* exports: argument checks and the exception firewall around
// minicpm::scheduler (csrc/engine/scheduler.h).
#include "api/boundary.h"
#include "engine/eagle-drafter.h"
#include "engine/scheduler.h"
#include "model/token-list.h"
#include "minicpm.h"

#include <algorithm>
#include <climits>
#include <memory>

struct minicpm_engine {
    std::unique_ptr<minicpm::scheduler> impl;
};

using minicpm::fail;
using minicpm::guarded;

static minicpm::scheduler & checked(minicpm_engine_t * engine, const char * fn) {
    if (engine == nullptr || !engine->impl) fail(MINICPM_STATUS_INVALID_ARGUMENT, std::string(fn) + ": engine is NULL");
    return *engine->impl;
}

extern "C" {

MINICPM_API void minicpm_engine_default_params(struct minicpm_engine_params * out) {
    if (out == nullptr) return;
    *out = {};
    out->size = sizeof(struct minicpm_engine_params);
    out->n_threads = 0;
    out->n_batch_max = 64;
    out->n_chunk = 256;
    out->n_ctx = 0;
    out->n_queue_max = 256;
    out->kv_dtype = MINICPM_DTYPE_BF16;
    out->prefix_cache = 1;
    out->kv_bytes = 0;
    out->draft_model = nullptr;
    out->draft_num_iter = 2;  // CPM.cu's CLI defaults (ENGINE_REFERENCE 4.1)
    out->draft_top_k = 10;
    out->draft_tree_size = 12;
    out->draft_kv_bytes = 0;
    out->draft_head = nullptr;
    out->draft_vocab = nullptr;
    out->draft_vocab_size = 0;
}

MINICPM_API void minicpm_sampling_default_params(struct minicpm_sampling_params * out) {
    if (out != nullptr) minicpm::default_sampling_params(*out);
}

MINICPM_API int32_t minicpm_engine_init(minicpm_model_t * model, const struct minicpm_engine_params * params,
                                        minicpm_engine_t ** out) {
    return guarded([&] {
        if (out == nullptr) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_init: out is NULL");
        *out = nullptr;
        if (model == nullptr || !model->impl) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_init: model is NULL");
        MINICPM_CHECK_PARAMS(params, minicpm_engine_params);
        minicpm_engine_params p;
        if (params != nullptr) {
            p = *params;
        } else {
            minicpm_engine_default_params(&p);
        }
        auto engine = std::make_unique<minicpm_engine>();
        engine->impl = std::make_unique<minicpm::scheduler>(*model->impl, p);
        if (p.draft_model != nullptr && p.draft_head != nullptr)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_init: draft_model and draft_head are exclusive");
        if (p.draft_vocab != nullptr && p.draft_model == nullptr && p.draft_head == nullptr)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_init: draft_vocab needs draft_model or draft_head");
        if (p.draft_vocab_size < 0)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine params: draft_vocab_size must be >= 0");
        if (p.draft_model != nullptr || p.draft_head != nullptr) {
            if (p.draft_model != nullptr && !p.draft_model->impl)
                fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_init: draft_model is freed");
            minicpm::scheduler &    s = *engine->impl;
            const minicpm::model &  target = *model->impl;
            std::unique_ptr<minicpm::eagle_head> head;
            if (p.draft_head != nullptr) head = minicpm::eagle_head::load(p.draft_head, target, true);
            const minicpm::model_config & dc = head ? head->config() : p.draft_model->impl->config();
            minicpm::tree_shape     shape{p.draft_num_iter, p.draft_top_k, p.draft_tree_size};
            const minicpm::dtype    kv_type = minicpm::dtype(p.kv_dtype);
            const uint64_t          bytes = p.draft_kv_bytes > 0 ? p.draft_kv_bytes
                                            : p.kv_bytes > 0   ? p.kv_bytes
                                                               : (uint64_t(1) << 30);
            const uint64_t per_block = minicpm::kv_pool::bytes_per_block(dc, kv_type);
            const uint64_t useful =
                uint64_t(std::max(p.n_batch_max, 1)) * uint64_t(minicpm::kv_blocks_for(int64_t(s.n_ctx()) + 64));
            const uint64_t blocks = std::min<uint64_t>({bytes / per_block, useful, uint64_t(INT32_MAX / 64)});
            if (blocks < 1) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine params: draft_kv_bytes below one KV block");
            std::vector<int32_t> ids;
            if (p.draft_vocab != nullptr) ids = minicpm::load_token_list(p.draft_vocab, target.config().n_vocab);
            if (head) {
                if (!ids.empty()) head->restrict_vocab(ids, p.draft_vocab_size);
                s.set_drafter(std::make_shared<minicpm::eagle_drafter>(std::move(head), s.backend_ref(), kv_type,
                                                                       int32_t(blocks), shape),
                              shape.tree_size - 1);
            } else {
                auto d = std::make_shared<minicpm::model_drafter>(*p.draft_model->impl, target.config().n_vocab,
                                                                  s.backend_ref(), kv_type, int32_t(blocks), shape);
                if (!ids.empty()) d->restrict_vocab(ids, p.draft_vocab_size > 0 ? p.draft_vocab_size : int32_t(ids.size()));
                s.set_drafter(d, shape.tree_size - 1);
            }
        }
        *out = engine.release();
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_set_notify(minicpm_engine_t * engine, minicpm_notify_fn fn, void * user_data) {
    return guarded([&] {
        checked(engine, "engine_set_notify").set_notify(fn, user_data);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_submit(minicpm_engine_t * engine, const int32_t * tokens, int32_t n_tokens,
                                          const struct minicpm_sampling_params * sampling, const int32_t * stop_ids,
                                          int32_t n_stop_ids, const int32_t * bias_ids, const float * bias_values,
                                          int32_t n_bias, uint64_t * request_id) {
    return guarded([&] {
        minicpm::scheduler & s = checked(engine, "engine_submit");
        if (request_id == nullptr) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_submit: request_id is NULL");
        *request_id = 0;
        MINICPM_CHECK_PARAMS(sampling, minicpm_sampling_params);
        *request_id = s.submit(tokens, n_tokens, sampling, stop_ids, n_stop_ids, bias_ids, bias_values, n_bias);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_drain(minicpm_engine_t * engine, uint64_t request_id, struct minicpm_event * out,
                                         int32_t cap) {
    return guarded([&] {
        std::string   error;
        const int32_t n = checked(engine, "engine_drain").drain(request_id, out, cap, &error);
        if (!error.empty()) minicpm::set_last_error(error);  // the message of a FINISH_ERROR event
        return n;
    });
}

MINICPM_API int32_t minicpm_engine_poll(minicpm_engine_t * engine, uint64_t * ids, int32_t cap) {
    return guarded([&] { return checked(engine, "engine_poll").poll(ids, cap); });
}

MINICPM_API int32_t minicpm_engine_cancel(minicpm_engine_t * engine, uint64_t request_id) {
    return guarded([&] {
        checked(engine, "engine_cancel").cancel(request_id);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_set_mask(minicpm_engine_t * engine, uint64_t request_id, const uint32_t * bits,
                                            int32_t n_words) {
    return guarded([&] {
        checked(engine, "engine_set_mask").set_mask(request_id, bits, n_words);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_request_info(minicpm_engine_t * engine, uint64_t request_id,
                                                struct minicpm_request_info * out) {
    return guarded([&] {
        minicpm::scheduler & s = checked(engine, "engine_request_info");
        if (out == nullptr) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_request_info: out is NULL");
        MINICPM_CHECK_PARAMS(out, minicpm_request_info);
        s.request_info(request_id, *out);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API int32_t minicpm_engine_stats(minicpm_engine_t * engine, struct minicpm_engine_stats * out) {
    return guarded([&] {
        minicpm::scheduler & s = checked(engine, "engine_stats");
        if (out == nullptr) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_stats: out is NULL");
        MINICPM_CHECK_PARAMS(out, struct minicpm_engine_stats);
        s.stats(*out);
        return int32_t(MINICPM_STATUS_OK);
    });
}

MINICPM_API void minicpm_engine_free(minicpm_engine_t * engine) { delete engine; }

}  // extern "C"
