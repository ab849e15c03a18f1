// Per-request token sampler: logit bias, penalties, greedy or temperature + top-k / top-p / min-p, a seeded
// RNG, stop ids, and log-probabilities. Owned and called by one thread (the engine's scheduler thread).
//
// Chain, in the order llama.cpp and vLLM apply it:
//   logit bias -> repetition penalty (HF/CTRL: divide positive / multiply negative logits of tokens seen in the
//   prompt + generated window) -> presence / frequency penalties (OpenAI: over generated tokens in the window)
//   -> greedy when temperature <= 0 -> temperature -> top-k -> top-p -> min-p -> draw.
// Logprobs are the log-softmax of the raw model logits, before bias, penalties and temperature: they describe
// the model's distribution, not the sampler's (as the OpenAI API reports them).
#pragma once

#include "core/backend.h"
#include "minicpm.h"

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <utility>
#include <vector>

namespace minicpm {

// xoshiro256** seeded through splitmix64: same seed, same stream on every platform.
class rng {
  public:
    explicit rng(uint64_t seed);
    uint64_t next();
    double   uniform();  // [0, 1) with 53 random bits

  private:
    uint64_t s_[4];
};

// What one sampling step produced. top_* are filled when n_top_logprobs > 0.
struct sample_result {
    int32_t token = -1;
    float   logprob = 0.0f;
    int32_t n_top = 0;
    int32_t top_tokens[MINICPM_MAX_TOP_LOGPROBS] = {};
    float   top_logprobs[MINICPM_MAX_TOP_LOGPROBS] = {};
};

// Scratch one thread reuses across sample() calls so that no step allocates after warm-up.
struct sampler_scratch {
    std::vector<float>                     logits;
    std::vector<std::pair<float, int32_t>> cand, kept, edge;
    std::vector<uint16_t>                  bucket;
    std::vector<double>                    mass;
    std::vector<double>                    p, q;  // dense distributions of speculative verification
};

class sampler {
  public:
    // params must already be validated (validate_sampling_params); stop and bias ids are checked here against
    // n_vocab (minicpm::error _INVALID_ARGUMENT naming the entry). prompt seeds the repetition window.
    sampler(const minicpm_sampling_params & params, int32_t n_vocab, const std::vector<int32_t> & eos_ids,
            const int32_t * stop_ids, int32_t n_stop_ids, const int32_t * bias_ids, const float * bias_values,
            int32_t n_bias, const int32_t * prompt, int32_t n_prompt);

    // Picks the next token from one row of n_vocab raw logits. Throws minicpm::error when every token is
    // forbidden (all logits -inf after bias). Does not record the token: call accept() with it.
    // allowed (constrained decoding): a bitset of ceil(n_vocab / 32) words; tokens whose bit is clear get -inf
    // after bias and penalties. nullptr: every token.
    sample_result sample(const float * logits, sampler_scratch & scratch, const uint32_t * allowed = nullptr);

    // The processed distribution of one row of raw logits (bias, penalties, temperature, top-k, top-p, min-p):
    // the kept candidates as (weight, id) in scratch.cand, in no particular order; returns the sum of their
    // weights. *best = the adjusted argmax. Greedy (temperature <= 0): cand is left empty and 0 returned.
    // Throws like sample() when every token is forbidden.
    // allowed (optional): a bitset of the tokens a constrained request may take; others become -inf.
    double distribution(const float * logits, sampler_scratch & scratch, int32_t * best,
                        const uint32_t * allowed = nullptr);

    // Sets out.logprob and the top logprobs of out.token (as sample() does) from the raw row.
    void fill_logprobs(const float * logits, sample_result & out) const;

    // The request's seeded random stream (speculative verification draws its uniforms from it).
    rng & random() { return rng_; }
    bool  greedy() const { return params_.temperature <= 0.0f; }
    const minicpm_sampling_params & params() const { return params_; }

    // Applies the logit bias and the penalties to one row of n_vocab logits in place (the first steps of
    // sample(), exposed so that tests can check the amounts).
    void adjust(float * logits) const;

    // This request's next draw as a device sampling row (backend::sample): fills row and appends its adjust
    // entries (bias and penalty window, one per token) to adjust. False when it needs the host sampler: top
    // logprobs, or a token biased twice (the host adds the biases one by one).
    bool device_row(sample_row & row, std::vector<sample_adjust> & adjust) const;

    // Records a generated token in the penalty history.
    void accept(int32_t token);

    // Undoes the last n accept() calls (tokens drafted and verified, then not kept): the penalty window and its
    // counts return to what they were. Throws _INTERNAL when fewer than n tokens were accepted.
    void    rollback(int32_t n);
    int32_t n_accepted() const { return n_accepted_; }

    // True for an EOS id of the model (unless ignore_eos) or one of the request's stop ids.
    bool is_stop(int32_t token) const;

  private:
    struct seen {
        int32_t n_all = 0;        // occurrences in the window (prompt + generated)
        int32_t n_generated = 0;  // occurrences among generated tokens in the window
    };

    void push_history(int32_t token, bool generated);
    void forget(int32_t token, bool generated);  // one occurrence leaves the window

    minicpm_sampling_params                 params_;
    int32_t                                 n_vocab_;
    std::vector<int32_t>                    stop_ids_;  // sorted, EOS included unless ignore_eos
    std::vector<std::pair<int32_t, float>>  bias_;
    rng                                     rng_;
    bool                                    track_history_;
    // Window of the last penalty_last_n tokens (all when -1) and their counts; flag = generated.
    std::deque<std::pair<int32_t, bool>>    history_;
    std::vector<std::pair<int32_t, bool>>   all_;  // every token pushed (prompt + accepted): rollback refills
    int32_t                                 n_accepted_ = 0;
    std::unordered_map<int32_t, seen>       seen_;
};

// Throws minicpm::error(MINICPM_STATUS_INVALID_ARGUMENT) naming the first bad field.
void validate_sampling_params(const minicpm_sampling_params & p);

// Fills p with the library defaults (temperature 1, everything else off, seed 0).
void default_sampling_params(minicpm_sampling_params & p);

}  // namespace minicpm
