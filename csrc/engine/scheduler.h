// The engine behind minicpm_engine_*: one scheduler thread that owns a thread pool, a KV pool and the request
// table, and runs continuous batching. Each step:
//   (a) apply cancels (KV released at once, CANCELLED event);
//   (b) admit waiting requests FIFO while the KV pool holds their prompt (blocks reserved for the whole prompt)
//       plus one spare block per decoding sequence;
//   (c) build one batch: every decoding sequence (1 token each; at most n_batch_max requests are admitted) plus
//       prefill chunks of admitted prompts, n_chunk prompt tokens in all, so a long prompt never stalls streams;
//   (d) one model::forward over the batch, logits only for the last row of each sequence that samples;
//   (e) sample, append events, ring the doorbell on empty -> non-empty, finish on stop / length / n_ctx.
// KV grows one 64-token block at a time during decode. When the pool runs dry the newest running request is
// preempted by recompute: its KV is released and it goes back to the head of the queue with prompt + generated
// tokens as its new prompt (its sampler state is kept, the client sees nothing).
//
// Prefix cache (params.prefix_cache): every full block a request has committed is indexed by its chained token
// hash (prefix-cache.h) and stays in the pool, idle, after the request ends; admission shares the longest
// cached prefix of a prompt by reference (at least its last token is recomputed: a fully cached last block is
// copied on write) and counts only the blocks it still needs. Eviction takes idle blocks only (LRU), when an
// allocation finds no free block, so it never touches a block a request holds; preemption and cancel release
// references exactly as without the cache.
//
// Locking: one mutex guards the table and the queues; forward and sampling run without it. Fields marked
// [engine] are read and written by the scheduler thread only; the others need the mutex.
#pragma once

#include "core/threadpool.h"
#include "engine/prefix-cache.h"
#include "engine/drafter.h"
#include "engine/sampler.h"
#include "minicpm.h"
#include "model/minicpm4.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace minicpm {

// What one step ran; handed to the step observer (tests record interleaving with it).
struct step_trace {
    struct part {
        uint64_t request_id;
        int32_t n_rows;    // tokens of this request in the batch
        bool    prefill;   // prompt chunk (true) or one decode token (false)
    };
    uint64_t          step = 0;
    std::vector<part> parts;
};

class scheduler {
  public:
    // Validates params (see minicpm_engine_params), makes the engine's backend (its own threads and buffers on
    // the model's backend kind; n_threads comes from params), allocates the KV pool and starts the thread.
    // opts selects the op set (tests pass reference = true).
    scheduler(const model & m, const minicpm_engine_params & params, const backend_options & opts = {});
    // Runs on a backend the caller made (tests wrap one to inject failures); params.n_threads is not used.
    scheduler(const model & m, const minicpm_engine_params & params, std::unique_ptr<backend> be);
    // Stops the thread (after the step in flight) and joins it. Must not run on the notify callback.
    ~scheduler();
    scheduler(const scheduler &) = delete;
    scheduler & operator=(const scheduler &) = delete;

    // Waits until a callback in flight has returned (unless called from the callback itself), so the old
    // callback is never called after this returns.
    void set_notify(minicpm_notify_fn fn, void * user_data);
    // Checks, with the lock held, that every block's reference count equals the references the requests' block
    // tables hold; returns "" or what differs (tests call it when the engine is idle and busy).
    std::string check_refcounts();

    // Called on the scheduler thread after every step, without the lock.
    void set_step_observer(std::function<void(const step_trace &)> fn);

    // Speculative decoding (engine/drafter.h): before each step the drafter proposes a token tree for every
    // decoding request that has not opted out (at most max_nodes nodes, no deeper than the tokens the request
    // may still generate); the step verifies each tree in one masked segment, keeps the longest path its samples
    // confirm plus the sample after it (KV rows compacted), truncates the rest and rolls the sampler back.
    // Output equals decoding without drafts. Called on the scheduler thread without the lock. nullptr removes it.
    void set_drafter(std::shared_ptr<drafter> d, int32_t max_nodes);
    // A chain drafter: proposes up to max tokens expected to follow tokens[0, n) and returns how many it wrote
    // (a tree whose node i has parent i - 1). Tests drive it directly.
    using draft_fn = std::function<int32_t(uint64_t id, const int32_t * tokens, int32_t n, int32_t * out, int32_t max)>;
    void set_drafter(draft_fn fn, int32_t max_draft);
    // The engine's backend: a drafter that runs a model on the scheduler thread uses it.
    backend & backend_ref() { return *be_; }
    int32_t   n_ctx() const { return cfg_.n_ctx; }

    // Throws minicpm::error: _QUEUE_FULL, _INVALID_ARGUMENT (naming the field), _TOO_LARGE (with the numbers).
    // sampling may be NULL (library defaults).
    uint64_t submit(const int32_t * tokens, int32_t n_tokens, const minicpm_sampling_params * sampling,
                   const int32_t * stop_ids, int32_t n_stop_ids, const int32_t * bias_ids, const float * bias_values,
                   int32_t n_bias);
    // Returns the count moved; *error_message receives the error text when an ERROR finish event was drained.
    int32_t drain(uint64_t id, minicpm_event * out, int32_t cap, std::string * error_message);
    int32_t poll(uint64_t * ids, int32_t cap);
    void    cancel(uint64_t id);
    // Constrained decoding: the allowed set of a masked request's next token (minicpm_engine_set_mask).
    void    set_mask(uint64_t id, const uint32_t * bits, int32_t n_words);
    void    request_info(uint64_t id, minicpm_request_info & out);
    void    stats(struct minicpm_engine_stats & out);

  private:
    struct request {
        uint64_t             id = 0;
        int32_t              n_prompt = 0;     // tokens the client submitted
        int32_t              n_max_tokens = 0;
        std::vector<int32_t> tokens;           // [engine] prompt, then generated tokens
        kv_seq               kv;               // [engine] KV blocks; kv.n_tokens = tokens in the KV cache
        uint64_t             admit_order = 0;  // [engine] larger = admitted later (the preemption victim)
        int32_t              n_hashed = 0;     // [engine] leading KV blocks indexed (or found) in the prefix cache
        uint64_t             chain = 0;        // [engine] the key of block n_hashed - 1 (the cache seed when 0)
        int32_t              n_cached = 0;     // prompt tokens the first admission took from the prefix cache
        sampler              smp;              // [engine]
        bool                 speculative = true;  // drafts allowed (per-request opt-out)
        draft_tree           draft;            // [engine] this step's drafts
        int32_t              n_spec_verifies = 0, n_spec_accepted = 0;  // [engine] reported in every event
        bool                 masked = false;   // constrained: samples only with a mask set for that token
        bool                 mask_ready = false;  // mask holds the allowed set of the next token
        std::vector<uint32_t> mask;            // set_mask writes it
        std::vector<uint32_t> step_mask;       // [engine] the mask this step samples with (taken from mask)

        int32_t                   state = MINICPM_REQUEST_WAITING;
        int32_t                   n_prefilled = 0;
        int32_t                   n_generated = 0;
        bool                      cancel_requested = false;
        std::deque<minicpm_event> events;
        std::string               error;
        int64_t t_submit = 0, t_admit = 0, t_first_token = 0, t_end = 0;

        request(sampler && s) : smp(std::move(s)) {}
    };

    // One segment of the batch being built.
    struct batch_entry {
        request * r;
        int32_t   n_rows;
        bool      prefill;
        bool      samples;      // the segment ends at the last known token: its last row gives the next token
        int32_t   n_draft = 0;  // decode rows after the first are draft nodes; every row then has logits
        int32_t   row_begin = 0;
        bool      tree = false; // the drafts form a tree (r->draft's parents), not a chain
    };

    struct doorbell {
        uint64_t id;
        int32_t  n_ready;
    };

    void loop();
    void step(std::unique_lock<std::mutex> & lk);
    void apply_cancels();
    void admit();
    bool device_sampling_rows();
    bool sample_on_device(size_t n_entries);
    void make_drafts(std::unique_lock<std::mutex> & lk);  // drafts of the decoding requests, without the lock
    void observe_rows(const batch_entry & e, const std::vector<int32_t> & path);  // hands committed hidden rows to the drafter
    void build_batch();
    void commit();

    // All with the mutex held.
    void push_event(request & r, const minicpm_event & ev);
    void finish(request & r, const minicpm_event & last, const std::string & error = {});
    void release_kv(request & r);
    void index_blocks(request & r);  // indexes r's full committed blocks in the prefix cache
    void preempt(request & r);
    // Writable slots [n_past, n_past + n); may preempt others (or r itself: returns false).
    bool grow_kv(request & r, int32_t n);
    void fail_running(const std::string & message);
    void ring(std::unique_lock<std::mutex> & lk);  // rings bells_ without the lock; returns with it held

    // minicpm_engine_params with defaults applied and every value checked.
    struct config {
        int32_t  n_threads, n_batch_max, n_chunk, n_ctx, n_queue_max;
        dtype    kv_type;
        int32_t  n_blocks;
        bool     prefix_cache;
        bool     exact_kernels;
    };
    // be (optional): a device backend's arena sizes the default KV budget (kv_bytes 0: what the arena has
    // left after the weights and a step's activations) and bounds an explicit one.
    static config resolve(const model & m, const minicpm_engine_params & p, const backend * be);
    static backend_options with_threads(backend_options o, const config & c);

    const model &                model_;
    const config                 cfg_;
    const int32_t                n_vocab_;
    std::vector<int32_t>         eos_ids_;
    std::unique_ptr<backend>     be_;
    std::unique_ptr<thread_pool> own_pool_;  // host threads for sampling when the backend has none
    thread_pool &                host_;
    kv_pool                      kv_;
    std::unique_ptr<prefix_cache> cache_;  // null when params.prefix_cache is 0
    forward_workspace            ws_;

    std::mutex                                  mu_;
    std::condition_variable                     cv_;       // wakes the scheduler: submit, cancel, stop
    std::condition_variable                     cv_idle_;  // wakes set_notify when a callback returns
    bool                                        stop_ = false;
    minicpm_notify_fn                           notify_ = nullptr;
    void *                                      notify_user_ = nullptr;
    int32_t                                     n_ringing_ = 0;
    std::function<void(const step_trace &)>     observer_;
    std::shared_ptr<drafter>                    drafter_;
    int32_t                                     max_draft_ = 0;
    std::map<uint64_t, std::unique_ptr<request>> table_;
    std::deque<request *>                       waiting_;
    std::vector<request *>                      running_;  // admission order
    std::vector<doorbell>                       bells_;    // collected under the lock, rung without it
    std::vector<doorbell>                       ringing_;  // [engine] the bells being rung
    uint64_t                                    next_id_ = 1;
    int32_t                                     n_cancel_pending_ = 0;
    int32_t                                     n_undrained_ = 0;
    bool                                        mask_wait_ = false;  // [engine] a masked request sat out this step
    uint64_t                                    n_masks_set_ = 0;    // set_mask calls (wakes a step waiting on one)
    uint64_t                                    n_admitted_ = 0;
    uint64_t n_steps_ = 0, n_prompt_tokens_ = 0, n_generated_tokens_ = 0, n_errors_ = 0;
    uint64_t n_prefix_queries_ = 0, n_prefix_hits_ = 0;
    std::vector<int32_t> match_buf_;  // [engine]
    // Speculative decoding: verify segments run, draft nodes verified, drafts kept, and per depth d (index
    // d - 1) the verify segments that kept at least d drafts.
    uint64_t n_spec_verifies_ = 0, n_spec_drafted_ = 0, n_spec_accepted_ = 0;
    uint64_t n_spec_at_depth_[MINICPM_SPEC_MAX_DEPTH] = {};
    // Forward time and its attention part (ws_.attn_us), published after each forward for stats().
    std::atomic<uint64_t> t_forward_us_{0}, t_attention_us_{0};
    std::atomic<uint64_t> graph_captures_{0}, graph_replays_{0}, graph_fallbacks_{0};  // backend step graphs

    // [engine] the batch under construction and reused buffers.
    std::vector<batch_entry>     entries_;
    std::vector<int32_t>         batch_tokens_, batch_pos_, logit_rows_;
    std::vector<uint64_t>        batch_masks_;          // ancestor masks of tree segments
    std::vector<int32_t>         seg_mask_at_;          // per segment: offset into batch_masks_, -1 = causal
    std::vector<kv_segment>      segs_;
    std::vector<float>           logits_;
    std::vector<float>           hidden_, observed_;  // the target's final-norm rows, for a drafter that reads them
    std::vector<sampler_scratch> sampler_scratch_;  // one per pool thread
    std::vector<std::vector<sample_result>> results_;  // per sampling entry, in batch order: one per kept row
    std::vector<std::vector<int32_t>>       paths_;    // per sampling entry: the segment rows of the kept drafts
    std::vector<std::string>     sample_errors_;    // "" or why sampling that entry failed
    std::vector<sample_row>      dev_rows_;         // device sampling: one row per sampling entry
    std::vector<sample_adjust>   dev_adjust_;
    std::vector<sample_out>      dev_out_;

    std::thread thread_;  // last: started once everything above exists
};

}  // namespace minicpm
