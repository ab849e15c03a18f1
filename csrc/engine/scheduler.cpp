#include "engine/scheduler.h"

#include "core/status.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace minicpm {

static constexpr int32_t kBlock = MINICPM_KV_BLOCK_SIZE;

static int32_t blocks_for(int64_t n_tokens) { return kv_blocks_for(n_tokens); }

static minicpm_event end_event(int32_t reason) {
    minicpm_event ev{};
    ev.token = -1;
    ev.finish_reason = reason;
    ev.t_us = minicpm_time_us();
    return ev;
}

static void invalid(const std::string & msg) { fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine params: " + msg); }

scheduler::config scheduler::resolve(const model & m, const minicpm_engine_params & p, const backend * be) {
    const model_config & mc = m.config();
    config c{};
    if (p.n_threads < 0) invalid("n_threads must be >= 0 (0 = all cores), got " + std::to_string(p.n_threads));
    if (p.n_batch_max < 1) invalid("n_batch_max must be >= 1, got " + std::to_string(p.n_batch_max));
    if (p.n_chunk < 1) invalid("n_chunk must be >= 1, got " + std::to_string(p.n_chunk));
    if (p.n_queue_max < 1) invalid("n_queue_max must be >= 1, got " + std::to_string(p.n_queue_max));
    if (p.n_ctx < 0 || p.n_ctx > mc.n_ctx_train)
        invalid("n_ctx must be in [0, " + std::to_string(mc.n_ctx_train) + "] (the model's positions), got " +
                std::to_string(p.n_ctx));
    if (p.kv_dtype != MINICPM_DTYPE_F32 && p.kv_dtype != MINICPM_DTYPE_F16 && p.kv_dtype != MINICPM_DTYPE_BF16)
        invalid("kv_dtype must be a minicpm_dtype (0 f32, 1 f16, 2 bf16), got " + std::to_string(p.kv_dtype));
    c.n_threads = p.n_threads > 0 ? p.n_threads : default_thread_count();
    c.n_batch_max = p.n_batch_max;
    c.n_chunk = p.n_chunk;
    c.n_queue_max = p.n_queue_max;
    c.n_ctx = p.n_ctx > 0 ? p.n_ctx : mc.n_ctx_train;
    c.kv_type = dtype(p.kv_dtype);
    c.exact_kernels = p.exact_kernels != 0;
    c.prefix_cache = p.prefix_cache != 0;

    uint64_t       kv_bytes = p.kv_bytes > 0 ? p.kv_bytes : (uint64_t(1) << 30);
    const uint64_t per_block = kv_pool::bytes_per_block(mc, c.kv_type);
    const device_memory_info dm = be ? be->device_memory() : device_memory_info{};
    if (dm.arena > 0) {
        // A device backend: the KV pool and the activations come out of the arena that holds the weights.
        // Kept back: the workspace of a step of one prompt chunk beside every decode row, the tensor-core
        // copy of its activations, the device sampler's keys, and 64 MiB for smaller scratch.
        const int64_t  T = int64_t(c.n_chunk) + c.n_batch_max;
        const uint64_t reserve = uint64_t(m.workspace_bytes(T, c.n_batch_max)) +
                                 uint64_t(T) * uint64_t(std::max(mc.n_embd, mc.n_ff)) * 2 +
                                 uint64_t(c.n_batch_max) * uint64_t(mc.n_vocab) * 4 + (uint64_t(64) << 20);
        const uint64_t room = dm.arena_free > reserve ? dm.arena_free - reserve : 0;
        const std::string where = "the device arena has " + std::to_string(dm.arena_free >> 20) +
                                  " MiB free after the weights, " + std::to_string(reserve >> 20) +
                                  " MiB of it kept for the activations of a " + std::to_string(T) + "-row step";
        if (room < per_block)
            fail(MINICPM_STATUS_OUT_OF_MEMORY, "engine: no room for a KV block: " + where +
                                                   "; raise the model's device_memory or lower n_chunk");
        if (p.kv_bytes == 0) {
            kv_bytes = room;
        } else if (p.kv_bytes > room) {
            fail(MINICPM_STATUS_OUT_OF_MEMORY, "engine params: kv_bytes " + std::to_string(p.kv_bytes >> 20) +
                                                   " MiB does not fit: " + where + " (" + std::to_string(room >> 20) +
                                                   " MiB left for KV)");
        }
    }
    const uint64_t budget = kv_bytes / per_block;
    if (budget < 1)
        invalid("kv_bytes " + std::to_string(kv_bytes) + " is smaller than one KV block (" +
                std::to_string(per_block) + " bytes = " + std::to_string(kBlock) + " tokens)");
    // More than every admitted request at full context could ever hold is memory that is never used.
    const uint64_t useful = uint64_t(c.n_batch_max) * uint64_t(blocks_for(c.n_ctx));
    c.n_blocks = int32_t(std::min({budget, useful, uint64_t(INT32_MAX / kBlock)}));
    return c;
}

backend_options scheduler::with_threads(backend_options o, const config & c) {
    o.n_threads = c.n_threads;
    if (c.exact_kernels && !o.reference) o.kernels = "exact";
    return o;
}

static thread_pool * host_pool_of(backend & be, std::unique_ptr<thread_pool> & own) {
    if (be.host_pool() != nullptr) return be.host_pool();
    own = std::make_unique<thread_pool>(1);
    return own.get();
}

scheduler::scheduler(const model & m, const minicpm_engine_params & params, const backend_options & opts)
    : scheduler(m, params, m.make_backend(with_threads(opts, resolve(m, params, nullptr)))) {}

scheduler::scheduler(const model & m, const minicpm_engine_params & params, std::unique_ptr<backend> be)
    : model_(m),
      cfg_(resolve(m, params, be.get())),
      n_vocab_(m.config().n_vocab),
      eos_ids_(m.config().eos_token_ids),
      be_(std::move(be)),
      host_(*host_pool_of(*be_, own_pool_)),
      kv_(*be_, m.config(), cfg_.kv_type, cfg_.n_blocks) {
    if (cfg_.prefix_cache) {
        // Whatever changes a block's rows for the same tokens is in the seed: KV dtype and attention mode.
        const uint64_t seed = uint64_t(cfg_.kv_type) * 0x100000001b3ULL + (m.config().sparse.present ? 0x5a5a : 0) +
                              uint64_t(m.config().n_layer) * 131 + uint64_t(m.config().n_head_kv) * 7919;
        cache_ = std::make_unique<prefix_cache>(kv_, seed);
    }
    sampler_scratch_.resize(size_t(host_.size()));
    // On a device, the workspace of the largest step (a prompt chunk beside every decode row, as resolve()
    // kept room for) is taken once: its address never moves, so recorded step graphs stay valid.
    if (!be_->host_memory())
        ws_.buf = be_->alloc(m.workspace_bytes(int64_t(cfg_.n_chunk) + cfg_.n_batch_max, cfg_.n_batch_max),
                             buffer_usage::compute);
    thread_ = std::thread([this] { loop(); });
}

scheduler::~scheduler() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    cache_.reset();
    model_.release_workspace(*be_, ws_);
}

std::string scheduler::check_refcounts() {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<int32_t> held(size_t(kv_.n_blocks()), 0);
    for (const request * r : running_)
        for (int32_t b : r->kv.blocks) held[size_t(b)]++;
    for (const request * r : waiting_)
        for (int32_t b : r->kv.blocks) held[size_t(b)]++;
    std::string out;
    int32_t     n_zero = 0;
    for (int32_t b = 0; b < kv_.n_blocks(); ++b) {
        if (kv_.refs(b) != held[size_t(b)] && out.size() < 400)
            out += "block " + std::to_string(b) + ": refs " + std::to_string(kv_.refs(b)) + ", held by requests " +
                   std::to_string(held[size_t(b)]) + "; ";
        n_zero += kv_.refs(b) == 0;
    }
    if (n_zero != kv_.n_free())
        out += "blocks with no reference " + std::to_string(n_zero) + " != free + idle " + std::to_string(kv_.n_free());
    return out;
}

void scheduler::set_notify(minicpm_notify_fn fn, void * user_data) {
    std::unique_lock<std::mutex> lk(mu_);
    notify_ = fn;
    notify_user_ = user_data;
    if (std::this_thread::get_id() != thread_.get_id()) cv_idle_.wait(lk, [this] { return n_ringing_ == 0; });
}

void scheduler::set_step_observer(std::function<void(const step_trace &)> fn) {
    std::lock_guard<std::mutex> lk(mu_);
    observer_ = std::move(fn);
}

namespace {
// The chain drafter behind set_drafter(draft_fn): node i's parent is node i - 1.
class chain_drafter final : public drafter {
  public:
    explicit chain_drafter(scheduler::draft_fn fn) : fn_(std::move(fn)) {}
    void draft(uint64_t id, const int32_t * tokens, int32_t n, int32_t max_nodes, int32_t max_depth,
               draft_tree & out) override {
        out.clear();
        buf_.resize(size_t(std::max(0, std::min(max_nodes, max_depth))));
        if (buf_.empty()) return;
        const int32_t k = std::clamp(fn_(id, tokens, n, buf_.data(), int32_t(buf_.size())), 0, int32_t(buf_.size()));
        for (int32_t i = 0; i < k; ++i) out.add(buf_[size_t(i)], i - 1);
    }

  private:
    scheduler::draft_fn  fn_;
    std::vector<int32_t> buf_;
};
}  // namespace

void scheduler::set_drafter(std::shared_ptr<drafter> d, int32_t max_nodes) {
    if (max_nodes < 0 || max_nodes >= k_max_tree_rows)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "drafter: max nodes must be in [0, " +
                                                  std::to_string(k_max_tree_rows - 1) + "]");
    std::lock_guard<std::mutex> lk(mu_);
    drafter_ = std::move(d);
    max_draft_ = drafter_ ? max_nodes : 0;
}

void scheduler::set_drafter(draft_fn fn, int32_t max_draft) {
    set_drafter(fn ? std::make_shared<chain_drafter>(std::move(fn)) : nullptr, max_draft);
}

uint64_t scheduler::submit(const int32_t * tokens, int32_t n_tokens, const minicpm_sampling_params * sampling,
                          const int32_t * stop_ids, int32_t n_stop_ids, const int32_t * bias_ids,
                          const float * bias_values, int32_t n_bias) {
    if (tokens == nullptr || n_tokens <= 0)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "prompt is empty (tokens " + std::string(tokens ? "set" : "NULL") +
                                                  ", n_tokens " + std::to_string(n_tokens) + ")");
    minicpm_sampling_params sp;
    if (sampling != nullptr) {
        sp = *sampling;
    } else {
        default_sampling_params(sp);
    }
    validate_sampling_params(sp);
    for (int32_t i = 0; i < n_tokens; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab_)
            fail(MINICPM_STATUS_INVALID_ARGUMENT, "tokens[" + std::to_string(i) + "] = " + std::to_string(tokens[i]) +
                                                      " is out of range [0, " + std::to_string(n_vocab_) + ")");
    }
    if (int64_t(n_tokens) + 1 > cfg_.n_ctx)
        fail(MINICPM_STATUS_TOO_LARGE, "prompt of " + std::to_string(n_tokens) +
                                           " tokens leaves no room to generate: prompt + 1 must fit n_ctx " +
                                           std::to_string(cfg_.n_ctx));
    const int32_t need = blocks_for(int64_t(n_tokens) + 1);
    if (need > kv_.n_blocks())
        fail(MINICPM_STATUS_TOO_LARGE,
             "prompt of " + std::to_string(n_tokens) + " tokens needs " + std::to_string(need) + " KV blocks (" +
                 std::to_string(need * kBlock) + " tokens) but the whole KV pool has " +
                 std::to_string(kv_.n_blocks()) + " blocks (" + std::to_string(kv_.n_blocks() * kBlock) +
                 " tokens); raise kv_bytes");

    auto r = std::make_unique<request>(sampler(sp, n_vocab_, eos_ids_, stop_ids, n_stop_ids, bias_ids, bias_values,
                                               n_bias, tokens, n_tokens));
    r->n_prompt = n_tokens;
    r->n_max_tokens = sp.n_max_tokens;
    r->speculative = sp.speculative != 0 && sp.masked == 0;  // drafts would bypass the mask
    r->masked = sp.masked != 0;
    r->tokens.assign(tokens, tokens + n_tokens);
    r->t_submit = minicpm_time_us();

    std::lock_guard<std::mutex> lk(mu_);
    if (int32_t(waiting_.size()) >= cfg_.n_queue_max)
        fail(MINICPM_STATUS_QUEUE_FULL, std::to_string(waiting_.size()) + " requests are waiting (n_queue_max " +
                                            std::to_string(cfg_.n_queue_max) + "); retry later");
    r->id = next_id_++;
    waiting_.push_back(r.get());
    const uint64_t id = r->id;
    table_.emplace(id, std::move(r));
    cv_.notify_one();
    return id;
}

int32_t scheduler::drain(uint64_t id, minicpm_event * out, int32_t cap, std::string * error_message) {
    if (cap < 0 || (cap > 0 && out == nullptr))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "drain: out is NULL or cap < 0 (cap " + std::to_string(cap) + ")");
    std::lock_guard<std::mutex> lk(mu_);
    auto it = table_.find(id);
    if (it == table_.end())
        fail(MINICPM_STATUS_NOT_FOUND, "request " + std::to_string(id) +
                                           " not found (never submitted, or released after its last event)");
    request & r = *it->second;
    const int32_t n = std::min<int32_t>(cap, int32_t(r.events.size()));
    std::copy_n(r.events.begin(), n, out);
    r.events.erase(r.events.begin(), r.events.begin() + n);
    if (n > 0 && out[n - 1].finish_reason != MINICPM_FINISH_NONE) {
        if (out[n - 1].finish_reason == MINICPM_FINISH_ERROR && error_message != nullptr) *error_message = r.error;
        table_.erase(it);
        n_undrained_--;
    }
    return n;
}

int32_t scheduler::poll(uint64_t * ids, int32_t cap) {
    if (cap < 0 || (cap > 0 && ids == nullptr))
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "poll: ids is NULL or cap < 0 (cap " + std::to_string(cap) + ")");
    std::lock_guard<std::mutex> lk(mu_);
    int32_t n = 0;
    for (auto it = table_.begin(); it != table_.end() && n < cap; ++it) {
        if (!it->second->events.empty()) ids[n++] = it->first;
    }
    return n;
}

void scheduler::cancel(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = table_.find(id);
    if (it == table_.end())
        fail(MINICPM_STATUS_NOT_FOUND, "request " + std::to_string(id) +
                                           " not found (never submitted, or released after its last event)");
    request & r = *it->second;
    if (r.state == MINICPM_REQUEST_FINISHED || r.cancel_requested) return;
    r.cancel_requested = true;
    n_cancel_pending_++;
    cv_.notify_one();
}

void scheduler::set_mask(uint64_t id, const uint32_t * bits, int32_t n_words) {
    const int32_t want = (n_vocab_ + 31) / 32;
    if (bits == nullptr) fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_set_mask: bits is NULL");
    if (n_words != want)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "engine_set_mask: n_words is " + std::to_string(n_words) +
                                                  ", the vocabulary of " + std::to_string(n_vocab_) + " tokens needs " +
                                                  std::to_string(want));
    std::lock_guard<std::mutex> lk(mu_);
    auto it = table_.find(id);
    if (it == table_.end()) fail(MINICPM_STATUS_NOT_FOUND, "request " + std::to_string(id) + " not found");
    request & r = *it->second;
    // Checked before the state, so the answer for an unmasked request does not depend on how far it has run.
    if (!r.masked)
        fail(MINICPM_STATUS_INVALID_ARGUMENT,
             "engine_set_mask: request " + std::to_string(id) + " was not submitted with sampling.masked = 1");
    if (r.state == MINICPM_REQUEST_FINISHED)
        fail(MINICPM_STATUS_NOT_FOUND, "request " + std::to_string(id) + " already finished");
    r.mask.assign(bits, bits + n_words);
    r.mask_ready = true;
    n_masks_set_++;
    cv_.notify_one();
}

void scheduler::request_info(uint64_t id, minicpm_request_info & out) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = table_.find(id);
    if (it == table_.end())
        fail(MINICPM_STATUS_NOT_FOUND, "request " + std::to_string(id) +
                                           " not found (never submitted, or released after its last event)");
    const request & r = *it->second;
    out = {};
    out.size = sizeof(minicpm_request_info);
    out.state = r.state;
    out.n_prompt = r.n_prompt;
    out.n_prefilled = r.n_prefilled;
    out.n_generated = r.n_generated;
    out.n_cached = r.n_cached;
    out.t_submit_us = r.t_submit;
    out.t_admit_us = r.t_admit;
    out.t_first_token_us = r.t_first_token;
    out.t_end_us = r.t_end;
}

void scheduler::stats(struct minicpm_engine_stats & out) {
    std::lock_guard<std::mutex> lk(mu_);
    out = {};
    out.size = sizeof(struct minicpm_engine_stats);
    out.n_running = int32_t(running_.size());
    out.n_waiting = int32_t(waiting_.size());
    out.n_undrained = n_undrained_;
    out.kv_tokens_used = (kv_.n_blocks() - kv_.n_free()) * kBlock;
    out.kv_tokens_total = kv_.n_blocks() * kBlock;
    out.backend = int32_t(be_->kind());
    std::snprintf(out.backend_name, sizeof(out.backend_name), "%s", be_->name());
    out.n_steps = n_steps_;
    out.n_prompt_tokens = n_prompt_tokens_;
    out.n_generated_tokens = n_generated_tokens_;
    out.n_errors = n_errors_;
    out.n_prefix_query_tokens = n_prefix_queries_;
    out.n_prefix_hit_tokens = n_prefix_hits_;
    out.n_prefix_evictions = kv_.n_evicted();
    out.kv_tokens_cached = kv_.n_idle() * kBlock;
    out.prefix_cache = cache_ ? 1 : 0;
    out.n_spec_verifies = n_spec_verifies_;
    out.n_spec_drafted = n_spec_drafted_;
    out.n_spec_accepted = n_spec_accepted_;
    std::copy_n(n_spec_at_depth_, MINICPM_SPEC_MAX_DEPTH, out.n_spec_at_depth);
    out.t_forward_us = t_forward_us_.load();
    out.t_attention_us = t_attention_us_.load();
    out.n_graph_captures = graph_captures_.load();
    out.n_graph_replays = graph_replays_.load();
    out.n_graph_fallbacks = graph_fallbacks_.load();
}

// ---------------------------------------------------------------------------------------------------------
// scheduler thread

void scheduler::loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        // Nothing in the queues means nothing to do: a waiting request always fits once nothing runs.
        cv_.wait(lk, [this] { return stop_ || n_cancel_pending_ > 0 || !waiting_.empty() || !running_.empty(); });
        if (stop_) return;
        try {
            step(lk);
        } catch (const std::exception & e) {
            // A bug or an allocation failure outside forward: end what was running, keep serving.
            if (!lk.owns_lock()) lk.lock();
            fail_running(std::string("engine step failed: ") + e.what());
            ring(lk);
        }
    }
}

void scheduler::step(std::unique_lock<std::mutex> & lk) {
    apply_cancels();
    admit();
    make_drafts(lk);
    mask_wait_ = false;
    const uint64_t n_masks = n_masks_set_, next_id = next_id_;
    build_batch();
    ring(lk);  // may unlock: a mask set meanwhile counts in n_masks_set_
    if (entries_.empty() && mask_wait_ && !stop_) {
        // Only masked requests waiting for their masks: sleep until set_mask (or submit, cancel, stop) wakes us.
        cv_.wait_for(lk, std::chrono::milliseconds(50), [&] {
            return stop_ || n_masks_set_ != n_masks || n_cancel_pending_ > 0 || next_id_ != next_id;
        });
        return;
    }
    if (entries_.empty() || stop_) return;

    lk.unlock();
    std::string error;
    try {
        batch_view b;
        b.tokens = batch_tokens_.data();
        b.pos = batch_pos_.data();
        b.n_tokens = int64_t(batch_tokens_.size());
        b.segs = segs_.data();
        b.n_segs = int32_t(segs_.size());
        b.logit_rows = logit_rows_.data();
        b.n_logit_rows = int32_t(logit_rows_.size());
        bool on_device = device_sampling_rows();
        b.logits_on_device = on_device;
        logits_.resize(on_device ? 0 : logit_rows_.size() * size_t(n_vocab_));
        if (drafter_ && drafter_->wants_hidden()) {
            hidden_.resize(batch_tokens_.size() * size_t(model_.config().n_embd));
            b.hidden = hidden_.data();
        }
        const int64_t t_fwd = minicpm_time_us();
        model_.forward(*be_, ws_, kv_, b, on_device ? nullptr : logits_.data());
        t_forward_us_ += uint64_t(minicpm_time_us() - t_fwd);
        t_attention_us_ = uint64_t(ws_.attn_us);
        const step_graph_stats gs = be_->graph_stats();
        graph_captures_ = gs.captures;
        graph_replays_ = gs.replays;
        graph_fallbacks_ = gs.fallbacks;

        // Sampling touches only each request's own sampler, so entries run in parallel on the pool. A drafted
        // run samples its rows in order, accepting each confirmed draft before sampling the next row (so the
        // penalties see it); commit() rolls those accepts back and replays what it keeps.
        std::vector<const batch_entry *> to_sample;
        std::vector<size_t>              first_row;
        size_t                           n_rows = 0;
        for (const batch_entry & e : entries_) {
            if (!e.samples) continue;
            to_sample.push_back(&e);
            first_row.push_back(n_rows);
            n_rows += size_t(1 + e.n_draft);
        }
        results_.assign(to_sample.size(), {});
        paths_.assign(to_sample.size(), {});
        sample_errors_.assign(to_sample.size(), std::string());
        if (on_device && !sample_on_device(to_sample.size())) {
            // The backend has no sampler after all: fetch the logits and sample on the host.
            logits_.resize(logit_rows_.size() * size_t(n_vocab_));
            be_->download(logits_.data(), ws_.buf, ws_.logits_offset, logits_.size() * sizeof(float));
            on_device = false;
        }
        if (!on_device) host_.run(int64_t(to_sample.size()), [&](int64_t k, int thread) {
            const batch_entry & e = *to_sample[size_t(k)];
            std::vector<sample_result> & out = results_[size_t(k)];
            std::vector<int32_t> &       path = paths_[size_t(k)];
            const draft_tree &           tree = e.r->draft;
            try {
                // Walk from the root: sample the row, follow the child drafted with that token, stop where
                // none was (or at a stop token). Each confirmed draft is accepted before its row is sampled.
                int32_t row = 0;
                for (;;) {
                    const float * l = logits_.data() + (first_row[size_t(k)] + size_t(row)) * size_t(n_vocab_);
                    sampler_scratch & sc = sampler_scratch_[size_t(thread)];
                    int32_t           next = -1;
                    if (size_t(row) < tree.q.size() && !tree.q[size_t(row)].empty() && !e.r->smp.greedy()) {
                        // Drawn children: speculative rejection sampling against the target's distribution.
                        int32_t      best = -1;
                        const double total = e.r->smp.distribution(l, sc, &best);
                        sc.p.assign(size_t(n_vocab_), 0.0);
                        sc.q.assign(size_t(n_vocab_), 0.0);
                        for (const auto & c : sc.cand) sc.p[size_t(c.second)] = c.first / total;
                        for (const auto & [tok, prob] : tree.q[size_t(row)]) sc.q[size_t(tok)] = prob;
                        std::vector<int32_t> kids, nodes;
                        for (int32_t i = row; i < e.n_draft; ++i)
                            if (tree.parents[size_t(i)] == row - 1) kids.push_back(tree.tokens[size_t(i)]), nodes.push_back(i);
                        sample_result rs;
                        const int32_t at = speculative_accept(sc.p, sc.q, kids.data(), int32_t(kids.size()),
                                                              e.r->smp.random(), &rs.token);
                        e.r->smp.fill_logprobs(l, rs);
                        out.push_back(rs);
                        if (e.r->smp.is_stop(rs.token)) break;
                        if (at < 0) break;
                        next = nodes[size_t(at)] + 1;
                        e.r->smp.accept(rs.token);
                        path.push_back(next);
                        row = next;
                        continue;
                    }
                    out.push_back(e.r->smp.sample(l, sc, e.r->masked ? e.r->step_mask.data() : nullptr));
                    const int32_t t = out.back().token;
                    if (e.n_draft == 0 || e.r->smp.is_stop(t)) break;
                    if (!e.tree) {
                        if (row < e.n_draft && t == batch_tokens_[size_t(e.row_begin + row + 1)]) next = row + 1;
                    } else {
                        for (int32_t i = row; i < e.n_draft && next < 0; ++i)  // children come after their parent
                            if (tree.parents[size_t(i)] == row - 1 && tree.tokens[size_t(i)] == t) next = i + 1;
                    }
                    if (next < 0) break;
                    e.r->smp.accept(t);
                    path.push_back(next);
                    row = next;
                }
            } catch (const std::exception & ex) {
                sample_errors_[size_t(k)] = ex.what();
                e.r->smp.rollback(int32_t(out.size()));  // every row sampled so far was accepted
                out.clear();
                path.clear();
            }
        });
    } catch (const std::exception & e) {
        error = std::string("forward failed: ") + e.what();
    }

    lk.lock();
    ++n_steps_;
    step_trace trace;
    if (observer_) {
        trace.step = n_steps_;
        for (const batch_entry & e : entries_) trace.parts.push_back({e.r->id, e.n_rows, e.prefill});
    }
    if (error.empty()) {
        commit();
    } else {
        for (const batch_entry & e : entries_) {
            n_errors_++;
            finish(*e.r, end_event(MINICPM_FINISH_ERROR), error);
        }
    }
    entries_.clear();
    ring(lk);
    if (observer_) {
        const auto observer = observer_;
        lk.unlock();
        observer(trace);
        lk.lock();
    }
}

// Device sampling serves a step when the backend keeps activations off the host and every sampling entry is
// one plain row (no drafts to verify, no constraint mask) whose request the device sampler covers. Fills
// dev_rows_ / dev_adjust_ in the order of the logit rows.
bool scheduler::device_sampling_rows() {
    dev_rows_.clear();
    dev_adjust_.clear();
    if (be_->host_memory()) return false;
    for (const batch_entry & e : entries_) {
        if (!e.samples) continue;
        if (e.n_draft > 0 || e.r->masked) return false;
        dev_rows_.emplace_back();
        if (!e.r->smp.device_row(dev_rows_.back(), dev_adjust_)) return false;
    }
    return !dev_rows_.empty() && dev_rows_.size() == logit_rows_.size();
}

// Samples the step's rows on the device (ws_.logits): only the ids and logprobs come back.
bool scheduler::sample_on_device(size_t n_entries) {
    dev_out_.resize(dev_rows_.size());
    if (n_entries != dev_rows_.size() ||
        !be_->sample(ws_.logits, n_vocab_, dev_rows_.data(), int32_t(dev_rows_.size()), dev_adjust_.data(),
                     int32_t(dev_adjust_.size()), dev_out_.data()))
        return false;
    size_t k = 0;
    for (const batch_entry & e : entries_) {
        if (!e.samples) continue;
        if (dev_out_[k].token < 0) {
            sample_errors_[k] = "sampling: every token is forbidden (logits all -inf or NaN)";
        } else {
            sample_result rs;
            rs.token = dev_out_[k].token;
            rs.logprob = e.r->smp.params().logprobs ? dev_out_[k].logprob : 0.0f;  // as the host: only when asked
            results_[k].push_back(rs);
        }
        ++k;
    }
    return true;
}

void scheduler::apply_cancels() {
    if (n_cancel_pending_ == 0) return;
    std::vector<request *> cancelled;
    for (request * r : waiting_)
        if (r->cancel_requested) cancelled.push_back(r);
    for (request * r : running_)
        if (r->cancel_requested) cancelled.push_back(r);
    for (request * r : cancelled) finish(*r, end_event(MINICPM_FINISH_CANCELLED));
    n_cancel_pending_ = 0;
}

void scheduler::admit() {
    // Headroom of one block per decoding sequence: without it a prompt admitted into the last free blocks is
    // preempted again by the next decode step that crosses a block boundary.
    int32_t headroom = 0;
    for (const request * r : running_) headroom += r->state == MINICPM_REQUEST_DECODING;
    while (!waiting_.empty() && int32_t(running_.size()) < cfg_.n_batch_max) {
        request &     r = *waiting_.front();
        const int32_t n = int32_t(r.tokens.size());
        const int32_t need_all = blocks_for(int64_t(n));
        if (need_all > kv_.n_blocks()) {
            // Only a preempted request can get here: its generated tokens outgrew the whole pool.
            finish(r, end_event(MINICPM_FINISH_LENGTH));
            continue;
        }
        // The longest cached prefix, in whole blocks; the last token is always computed (its logits are needed),
        // so a fully cached prompt keeps n - 1 cached tokens and copies its last block on write.
        uint64_t key = 0;
        match_buf_.clear();
        if (cache_) cache_->match(r.tokens.data(), n, need_all, match_buf_, &key);
        const int32_t n_match = int32_t(match_buf_.size());
        const int32_t n_cached = std::min(n_match * kBlock, n - 1);
        int32_t       n_idle_hits = 0;  // matched blocks now idle: counted in n_free() but about to be held
        for (int32_t b : match_buf_) n_idle_hits += kv_.refs(b) == 0;
        const int32_t need = need_all - n_match + (n_match * kBlock > n_cached ? 1 : 0);
        if (need + headroom > kv_.n_free() - n_idle_hits) break;
        waiting_.pop_front();
        for (int32_t b : match_buf_) kv_.retain(b);
        r.kv.blocks = match_buf_;
        r.kv.n_tokens = n_cached;
        r.n_hashed = n_match;
        r.chain = key;
        if (!kv_seq_prepare(kv_, r.kv, n_cached, n))
            fail(MINICPM_STATUS_INTERNAL, "admit: KV blocks counted free could not be allocated");
        r.state = MINICPM_REQUEST_PREFILLING;
        r.admit_order = ++n_admitted_;
        r.n_prefilled = std::min(n_cached, r.n_prompt);
        if (r.t_admit == 0) {  // the first admission: what the client's prompt found in the cache
            r.t_admit = minicpm_time_us();
            r.n_cached = std::min(n_cached, r.n_prompt);
            if (cache_) {
                n_prefix_queries_ += uint64_t(r.n_prompt);
                n_prefix_hits_ += uint64_t(r.n_cached);
            }
        }
        running_.push_back(&r);
    }
}

bool scheduler::grow_kv(request & r, int32_t n) {
    for (;;) {
        if (kv_seq_prepare(kv_, r.kv, r.kv.n_tokens, r.kv.n_tokens + n)) return true;
        // running_ is in admission order, so its back is the newest request.
        request * victim = running_.back();
        if (victim != &r) {
            preempt(*victim);
            continue;
        }
        if (running_.size() == 1) {
            finish(r, end_event(MINICPM_FINISH_LENGTH));  // r alone fills the whole pool
        } else {
            preempt(r);
        }
        return false;
    }
}

void scheduler::make_drafts(std::unique_lock<std::mutex> & lk) {
    for (request * r : running_) r->draft.clear();
    if (!drafter_ || max_draft_ == 0) return;
    const std::shared_ptr<drafter> d = drafter_;
    // Only this thread changes running_ and the [engine] fields, so they stay valid without the lock.
    std::vector<request *> todo;
    std::vector<int32_t>   depth;
    for (request * r : running_) {
        if (r->state != MINICPM_REQUEST_DECODING || !r->speculative || r->cancel_requested) continue;
        // Room for the drafts and the token sampled after them, in the context and in max_tokens.
        int32_t room = cfg_.n_ctx - int32_t(r->tokens.size()) - 1;
        if (r->n_max_tokens > 0) room = std::min(room, r->n_max_tokens - r->n_generated - 1);
        if (room <= 0) continue;
        todo.push_back(r);
        depth.push_back(room);
    }
    if (todo.empty()) return;
    lk.unlock();
    for (size_t i = 0; i < todo.size(); ++i) {
        request & r = *todo[i];
        try {
            if (r.smp.greedy()) {
                d->draft(r.id, r.tokens.data(), int32_t(r.tokens.size()), max_draft_, depth[i], r.draft);
            } else {
                d->draft_sampled(r.id, r.tokens.data(), int32_t(r.tokens.size()), max_draft_, depth[i],
                                 r.smp.params(), r.draft);
            }
            draft_tree_clip(r.draft, n_vocab_, max_draft_, depth[i]);
        } catch (const std::exception & e) {
            std::fprintf(stderr, "minicpm: drafter failed for request %llu (decoding goes on without drafts): %s\n",
                         (unsigned long long) r.id, e.what());
            r.draft.clear();
        }
    }
    lk.lock();
}

void scheduler::build_batch() {
    entries_.clear();
    batch_tokens_.clear();
    batch_pos_.clear();
    batch_masks_.clear();
    seg_mask_at_.clear();
    segs_.clear();
    logit_rows_.clear();
    // n_draft > 0: the decode row followed by r.draft's nodes, every row with logits.
    auto add = [this](request & r, int32_t n_rows, bool prefill, int32_t n_draft) {
        const int32_t n_past = r.kv.n_tokens;
        const bool    samples = n_past + n_rows - n_draft == int32_t(r.tokens.size());
        if (samples && r.masked) {  // the mask is used by this step: the next token needs a new one
            r.step_mask.swap(r.mask);
            r.mask_ready = false;
        }
        kv_segment s;
        s.row_begin = int32_t(batch_tokens_.size());
        s.n_rows = n_rows;
        s.n_past = n_past;
        s.blocks = r.kv.blocks.data();
        batch_tokens_.insert(batch_tokens_.end(), r.tokens.begin() + n_past,
                             r.tokens.begin() + n_past + n_rows - n_draft);
        bool tree = false;
        if (n_draft == 0) {
            for (int32_t j = 0; j < n_rows; ++j) batch_pos_.push_back(n_past + j);
            seg_mask_at_.push_back(-1);
        } else {
            batch_tokens_.insert(batch_tokens_.end(), r.draft.tokens.begin(), r.draft.tokens.begin() + n_draft);
            const size_t at = batch_masks_.size();
            batch_masks_.resize(at + size_t(n_rows));
            batch_pos_.resize(batch_pos_.size() + size_t(n_rows));
            tree = !draft_tree_layout(r.draft, n_past, batch_masks_.data() + at,
                                      batch_pos_.data() + batch_pos_.size() - size_t(n_rows));
            seg_mask_at_.push_back(tree ? int32_t(at) : -1);
        }
        segs_.push_back(s);
        for (int32_t i = n_draft; i >= 0 && samples; --i) logit_rows_.push_back(int32_t(batch_tokens_.size()) - 1 - i);
        batch_entry e{&r, n_rows, prefill, samples, n_draft, s.row_begin};
        e.tree = tree;
        entries_.push_back(e);
    };
    // Decode first: one token per sequence, plus its draft tree. grow_kv may preempt the newest requests,
    // which are always at the back of running_ (after i), so the index stays valid; if it removes running_[i]
    // itself the loop ends.
    for (size_t i = 0; i < running_.size(); ++i) {
        request & r = *running_[i];
        if (r.state != MINICPM_REQUEST_DECODING) continue;
        if (r.masked && !r.mask_ready) {  // its allowed set is not known yet: it sits this step out
            mask_wait_ = true;
            continue;
        }
        const int32_t n_draft = r.draft.size();
        if (!grow_kv(r, 1 + n_draft)) break;
        add(r, 1 + n_draft, false, n_draft);
    }
    // Then prompt chunks, oldest first, within the n_chunk budget (their blocks were reserved at admission).
    int32_t budget = cfg_.n_chunk;
    for (request * r : running_) {
        if (budget == 0) break;
        if (r->state != MINICPM_REQUEST_PREFILLING) continue;
        int32_t n = std::min(budget, int32_t(r->tokens.size()) - r->kv.n_tokens);
        // A masked prompt without its mask stops one token short of sampling.
        if (r->masked && !r->mask_ready && r->kv.n_tokens + n == int32_t(r->tokens.size())) {
            mask_wait_ = true;
            if (--n == 0) continue;
        }
        budget -= n;
        add(*r, n, true, 0);
    }
    for (size_t i = 0; i < segs_.size(); ++i)
        if (seg_mask_at_[i] >= 0) segs_[i].mask = batch_masks_.data() + seg_mask_at_[i];
}

void scheduler::commit() {
    size_t k = 0;
    for (const batch_entry & e : entries_) {
        request & r = *e.r;
        r.kv.n_tokens += e.n_rows - e.n_draft;
        r.n_prefilled = std::min(r.kv.n_tokens, r.n_prompt);
        index_blocks(r);
        if (e.prefill) n_prompt_tokens_ += uint64_t(e.n_rows);
        if (!e.samples) {
            if (drafter_ && drafter_->wants_hidden() && r.speculative) observe_rows(e, {});
            continue;
        }
        const std::vector<sample_result> & res = results_[k];
        const std::vector<int32_t> &       path = paths_[k];
        const std::string &                err = sample_errors_[k];
        ++k;
        // Undo the sampler's tentative accepts of confirmed drafts; the loop below accepts what is kept.
        if (!res.empty()) r.smp.rollback(int32_t(res.size()) - 1);
        if (r.cancel_requested) {
            finish(r, end_event(MINICPM_FINISH_CANCELLED));
            continue;
        }
        if (!err.empty()) {
            n_errors_++;
            finish(r, end_event(MINICPM_FINISH_ERROR), err);
            continue;
        }
        if (drafter_ && drafter_->wants_hidden() && r.speculative) observe_rows(e, path);
        if (e.n_draft > 0) {
            // Kept draft k (1-based) sits in slot n_past + path[k-1]; it moves to n_past + k. Sources lie at or
            // after their destinations and ascend, so copying in order never overwrites a later source.
            const int32_t n_past = r.kv.n_tokens - 1;
            std::vector<int32_t> src, dst;
            for (size_t j = 0; j < path.size(); ++j) {
                if (path[j] == int32_t(j) + 1) continue;
                src.push_back(n_past + path[j]);
                dst.push_back(n_past + int32_t(j) + 1);
            }
            if (!src.empty()) kv_seq_copy_rows(kv_, r.kv, src.data(), dst.data(), int32_t(src.size()));
            n_spec_verifies_++;
            r.n_spec_verifies++;
            n_spec_drafted_ += uint64_t(e.n_draft);
        }
        bool finished = false;
        for (size_t j = 0; j < res.size() && !finished; ++j) {
            const sample_result & rs = res[j];
            if (j > 0) {
                r.kv.n_tokens++;  // the confirmed draft before this token is in the KV cache
                n_spec_accepted_++;
                r.n_spec_accepted++;
                if (j <= MINICPM_SPEC_MAX_DEPTH) n_spec_at_depth_[j - 1]++;
            }
            r.smp.accept(rs.token);
            r.tokens.push_back(rs.token);
            r.n_generated++;
            n_generated_tokens_++;
            r.state = MINICPM_REQUEST_DECODING;

            minicpm_event ev{};
            ev.token = rs.token;
            ev.t_us = minicpm_time_us();
            ev.logprob = rs.logprob;
            ev.n_top = rs.n_top;
            std::copy_n(rs.top_tokens, rs.n_top, ev.top_tokens);
            std::copy_n(rs.top_logprobs, rs.n_top, ev.top_logprobs);
            if (r.t_first_token == 0) r.t_first_token = ev.t_us;
            if (r.smp.is_stop(rs.token)) {
                ev.finish_reason = MINICPM_FINISH_STOP;
            } else if ((r.n_max_tokens > 0 && r.n_generated >= r.n_max_tokens) ||
                       int32_t(r.tokens.size()) >= cfg_.n_ctx) {
                ev.finish_reason = MINICPM_FINISH_LENGTH;
            }
            finished = ev.finish_reason != MINICPM_FINISH_NONE;
            if (finished) {
                finish(r, ev);
            } else {
                push_event(r, ev);
            }
        }
        // Drafted rows past the kept ones leave the KV cache.
        if (!finished && e.n_draft > 0) kv_seq_truncate(kv_, r.kv, r.kv.n_tokens);
    }
}

void scheduler::observe_rows(const batch_entry & e, const std::vector<int32_t> & path) {
    // Committed rows: a plain segment's all, a verified tree's root and kept path (slots n_past, n_past + 1, ...).
    const size_t  H = size_t(model_.config().n_embd);
    const int32_t n = e.n_draft == 0 ? e.n_rows : 1 + int32_t(path.size());
    const int32_t n_past = e.r->kv.n_tokens - (e.n_rows - e.n_draft);  // commit() has advanced kv.n_tokens
    observed_.resize(size_t(n) * H);
    for (int32_t j = 0; j < n; ++j) {
        const int32_t row = e.row_begin + (e.n_draft == 0 || j == 0 ? j : path[size_t(j - 1)]);
        std::copy_n(hidden_.data() + size_t(row) * H, H, observed_.data() + size_t(j) * H);
    }
    drafter_->observe(e.r->id, n_past, observed_.data(), n);
}

void scheduler::push_event(request & r, const minicpm_event & ev) {
    r.events.push_back(ev);
    r.events.back().n_spec_verifies = r.n_spec_verifies;
    r.events.back().n_spec_accepted = r.n_spec_accepted;
    if (r.events.size() == 1) bells_.push_back({r.id, 1});
}

void scheduler::finish(request & r, const minicpm_event & last, const std::string & error) {
    release_kv(r);
    if (drafter_) drafter_->release(r.id);
    if (r.state == MINICPM_REQUEST_WAITING) {
        waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &r));
    } else {
        running_.erase(std::find(running_.begin(), running_.end(), &r));
    }
    r.state = MINICPM_REQUEST_FINISHED;
    r.t_end = last.t_us;
    r.error = error;
    n_undrained_++;
    push_event(r, last);
}

void scheduler::index_blocks(request & r) {
    if (!cache_) return;
    const int32_t n_full = r.kv.n_tokens / kBlock;
    if (r.n_hashed == 0) r.chain = cache_->seed();
    while (r.n_hashed < n_full) {
        const int32_t * t = r.tokens.data() + size_t(r.n_hashed) * kBlock;
        const uint64_t  key = prefix_cache::chain(r.chain, t);
        cache_->insert(key, r.chain, t, r.kv.blocks[size_t(r.n_hashed)]);  // false: that prefix is cached already
        r.chain = key;
        r.n_hashed++;
    }
}

void scheduler::release_kv(request & r) {
    index_blocks(r);  // what it computed stays reusable
    kv_seq_free(kv_, r.kv);
    r.n_hashed = 0;
}

void scheduler::preempt(request & r) {
    release_kv(r);
    running_.erase(std::find(running_.begin(), running_.end(), &r));
    r.state = MINICPM_REQUEST_WAITING;
    r.n_prefilled = 0;
    waiting_.push_front(&r);
}

void scheduler::fail_running(const std::string & message) {
    const std::vector<request *> running = running_;
    for (request * r : running) {
        n_errors_++;
        finish(*r, end_event(MINICPM_FINISH_ERROR), message);
    }
    entries_.clear();
}

void scheduler::ring(std::unique_lock<std::mutex> & lk) {
    if (bells_.empty()) return;
    const minicpm_notify_fn fn = notify_;
    void * const            user = notify_user_;
    if (fn == nullptr) {
        bells_.clear();  // no doorbell: callers poll
        return;
    }
    ringing_.swap(bells_);
    n_ringing_++;
    lk.unlock();
    for (const doorbell & b : ringing_) fn(user, b.id, b.n_ready);
    ringing_.clear();
    lk.lock();
    n_ringing_--;
    cv_idle_.notify_all();
}

}  // namespace minicpm
