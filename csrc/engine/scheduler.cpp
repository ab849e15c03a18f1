#include "engine/scheduler.h"

#include "core/status.h"

#include <algorithm>
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

scheduler::config scheduler::resolve(const model & m, const minicpm_engine_params & p) {
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

    const uint64_t kv_bytes = p.kv_bytes > 0 ? p.kv_bytes : (uint64_t(1) << 30);
    const uint64_t per_block = kv_pool::bytes_per_block(mc, c.kv_type);
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
    return o;
}

static thread_pool * host_pool_of(backend & be, std::unique_ptr<thread_pool> & own) {
    if (be.host_pool() != nullptr) return be.host_pool();
    own = std::make_unique<thread_pool>(1);
    return own.get();
}

scheduler::scheduler(const model & m, const minicpm_engine_params & params, const backend_options & opts)
    : scheduler(m, params, m.make_backend(with_threads(opts, resolve(m, params)))) {}

scheduler::scheduler(const model & m, const minicpm_engine_params & params, std::unique_ptr<backend> be)
    : model_(m),
      cfg_(resolve(m, params)),
      n_vocab_(m.config().n_vocab),
      eos_ids_(m.config().eos_token_ids),
      be_(std::move(be)),
      host_(*host_pool_of(*be_, own_pool_)),
      kv_(*be_, m.config(), cfg_.kv_type, cfg_.n_blocks) {
    sampler_scratch_.resize(size_t(host_.size()));
    thread_ = std::thread([this] { loop(); });
}

scheduler::~scheduler() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    model_.release_workspace(*be_, ws_);
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

void scheduler::set_drafter(draft_fn fn, int32_t max_draft) {
    if (max_draft < 0 || max_draft >= k_max_tree_rows)
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "drafter: max_draft must be in [0, " +
                                                  std::to_string(k_max_tree_rows - 1) + "]");
    std::lock_guard<std::mutex> lk(mu_);
    drafter_ = std::move(fn);
    max_draft_ = drafter_ ? max_draft : 0;
    draft_buf_.resize(size_t(max_draft_));
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
    out.t_forward_us = t_forward_us_.load();
    out.t_attention_us = t_attention_us_.load();
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
    build_batch();
    ring(lk);
    if (entries_.empty() || stop_) return;

    lk.unlock();
    std::string error;
    try {
        batch_view b;
        b.tokens = batch_tokens_.data();
        b.n_tokens = int64_t(batch_tokens_.size());
        b.segs = segs_.data();
        b.n_segs = int32_t(segs_.size());
        b.logit_rows = logit_rows_.data();
        b.n_logit_rows = int32_t(logit_rows_.size());
        logits_.resize(logit_rows_.size() * size_t(n_vocab_));
        const int64_t t_fwd = minicpm_time_us();
        model_.forward(*be_, ws_, kv_, b, logits_.data());
        t_forward_us_ += uint64_t(minicpm_time_us() - t_fwd);
        t_attention_us_ = uint64_t(ws_.attn_us);

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
        sample_errors_.assign(to_sample.size(), std::string());
        host_.run(int64_t(to_sample.size()), [&](int64_t k, int thread) {
            const batch_entry & e = *to_sample[size_t(k)];
            std::vector<sample_result> & out = results_[size_t(k)];
            try {
                for (int32_t i = 0; i <= e.n_draft; ++i) {
                    const float * row = logits_.data() + (first_row[size_t(k)] + size_t(i)) * size_t(n_vocab_);
                    out.push_back(e.r->smp.sample(row, sampler_scratch_[size_t(thread)]));
                    const int32_t t = out.back().token;
                    if (i == e.n_draft || t != batch_tokens_[size_t(e.row_begin + i + 1)] || e.r->smp.is_stop(t)) break;
                    e.r->smp.accept(t);
                }
            } catch (const std::exception & ex) {
                sample_errors_[size_t(k)] = ex.what();
                e.r->smp.rollback(int32_t(out.size()));  // every row sampled so far was accepted
                out.clear();
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
        const int32_t need = blocks_for(int64_t(r.tokens.size()));
        if (need > kv_.n_blocks()) {
            // Only a preempted request can get here: its generated tokens outgrew the whole pool.
            finish(r, end_event(MINICPM_FINISH_LENGTH));
            continue;
        }
        if (need + headroom > kv_.n_free()) break;
        waiting_.pop_front();
        if (!kv_seq_prepare(kv_, r.kv, 0, int32_t(r.tokens.size())))
            fail(MINICPM_STATUS_INTERNAL, "admit: KV blocks counted free could not be allocated");
        r.state = MINICPM_REQUEST_PREFILLING;
        r.admit_order = ++n_admitted_;
        if (r.t_admit == 0) r.t_admit = minicpm_time_us();
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

void scheduler::build_batch() {
    entries_.clear();
    batch_tokens_.clear();
    segs_.clear();
    logit_rows_.clear();
    // n_draft > 0: decode rows followed by the drafts in draft_buf_, every row with logits.
    auto add = [this](request & r, int32_t n_rows, bool prefill, int32_t n_draft) {
        const int32_t n_past = r.kv.n_tokens;
        const bool    samples = n_past + n_rows - n_draft == int32_t(r.tokens.size());
        kv_segment s;
        s.row_begin = int32_t(batch_tokens_.size());
        s.n_rows = n_rows;
        s.n_past = n_past;
        s.blocks = r.kv.blocks.data();
        segs_.push_back(s);
        batch_tokens_.insert(batch_tokens_.end(), r.tokens.begin() + n_past,
                             r.tokens.begin() + n_past + n_rows - n_draft);
        batch_tokens_.insert(batch_tokens_.end(), draft_buf_.begin(), draft_buf_.begin() + n_draft);
        for (int32_t i = n_draft; i >= 0 && samples; --i) logit_rows_.push_back(int32_t(batch_tokens_.size()) - 1 - i);
        entries_.push_back({&r, n_rows, prefill, samples, n_draft, s.row_begin});
    };
    // Decode first: one token per sequence, plus drafts when a drafter is set. grow_kv may preempt the newest
    // requests, which are always at the back of running_ (after i), so the index stays valid; if it removes
    // running_[i] itself the loop ends.
    for (size_t i = 0; i < running_.size(); ++i) {
        request & r = *running_[i];
        if (r.state != MINICPM_REQUEST_DECODING) continue;
        int32_t n_draft = 0;
        if (drafter_) {
            // Room for the drafts and the token sampled after them, in the context and in max_tokens.
            int32_t room = std::min(max_draft_, cfg_.n_ctx - int32_t(r.tokens.size()) - 1);
            if (r.n_max_tokens > 0) room = std::min(room, r.n_max_tokens - r.n_generated - 1);
            if (room > 0)
                n_draft = std::clamp(drafter_(r.id, r.tokens.data(), int32_t(r.tokens.size()), draft_buf_.data(), room),
                                     0, room);
            for (int32_t j = 0; j < n_draft; ++j)
                if (draft_buf_[size_t(j)] < 0 || draft_buf_[size_t(j)] >= n_vocab_) n_draft = j;  // a bad draft ends it
        }
        if (!grow_kv(r, 1 + n_draft)) break;
        add(r, 1 + n_draft, false, n_draft);
    }
    // Then prompt chunks, oldest first, within the n_chunk budget (their blocks were reserved at admission).
    int32_t budget = cfg_.n_chunk;
    for (request * r : running_) {
        if (budget == 0) break;
        if (r->state != MINICPM_REQUEST_PREFILLING) continue;
        const int32_t n = std::min(budget, int32_t(r->tokens.size()) - r->kv.n_tokens);
        budget -= n;
        add(*r, n, true, 0);
    }
}

void scheduler::commit() {
    size_t k = 0;
    for (const batch_entry & e : entries_) {
        request & r = *e.r;
        r.kv.n_tokens += e.n_rows - e.n_draft;
        r.n_prefilled = std::min(r.kv.n_tokens, r.n_prompt);
        if (e.prefill) n_prompt_tokens_ += uint64_t(e.n_rows);
        if (!e.samples) continue;
        const std::vector<sample_result> & res = results_[k];
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
        bool finished = false;
        for (size_t j = 0; j < res.size() && !finished; ++j) {
            const sample_result & rs = res[j];
            if (j > 0) r.kv.n_tokens++;  // the confirmed draft before this token is in the KV cache
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

void scheduler::push_event(request & r, const minicpm_event & ev) {
    r.events.push_back(ev);
    if (r.events.size() == 1) bells_.push_back({r.id, 1});
}

void scheduler::finish(request & r, const minicpm_event & last, const std::string & error) {
    release_kv(r);
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

void scheduler::release_kv(request & r) { kv_seq_free(kv_, r.kv); }

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
