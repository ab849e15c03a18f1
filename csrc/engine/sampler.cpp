#include "engine/sampler.h"

#include "core/status.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace minicpm {

static uint64_t splitmix64(uint64_t & x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

rng::rng(uint64_t seed) {
    for (auto & s : s_) s = splitmix64(seed);
}

uint64_t rng::next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

double rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

static void invalid(const std::string & msg) { fail(MINICPM_STATUS_INVALID_ARGUMENT, msg); }

static std::string num(float v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", double(v));
    return buf;
}

void validate_sampling_params(const minicpm_sampling_params & p) {
    auto in_range = [](const char * name, float v, float lo, float hi) {
        if (!(v >= lo && v <= hi))  // also rejects NaN
            invalid(std::string("sampling.") + name + " must be in [" + num(lo) + ", " + num(hi) + "], got " + num(v));
    };
    auto finite = [](const char * name, float v) {
        if (!std::isfinite(v)) invalid(std::string("sampling.") + name + " must be finite, got " + num(v));
    };
    finite("temperature", p.temperature);
    in_range("top_p", p.top_p, 0.0f, 1.0f);
    in_range("min_p", p.min_p, 0.0f, 1.0f);
    finite("repetition_penalty", p.repetition_penalty);
    if (!(p.repetition_penalty > 0.0f))
        invalid("sampling.repetition_penalty must be > 0, got " + num(p.repetition_penalty));
    finite("presence_penalty", p.presence_penalty);
    finite("frequency_penalty", p.frequency_penalty);
    if (p.penalty_last_n < -1)
        invalid("sampling.penalty_last_n must be >= -1, got " + std::to_string(p.penalty_last_n));
    if (p.n_top_logprobs < 0 || p.n_top_logprobs > MINICPM_MAX_TOP_LOGPROBS)
        invalid("sampling.n_top_logprobs must be in [0, " + std::to_string(MINICPM_MAX_TOP_LOGPROBS) + "], got " +
                std::to_string(p.n_top_logprobs));
    if (p.logprobs > 1) invalid("sampling.logprobs must be 0 or 1, got " + std::to_string(p.logprobs));
    if (p.ignore_eos > 1) invalid("sampling.ignore_eos must be 0 or 1, got " + std::to_string(p.ignore_eos));
    if (p.speculative > 1) invalid("sampling.speculative must be 0 or 1, got " + std::to_string(p.speculative));
    if (p.masked > 1) invalid("sampling.masked must be 0 or 1, got " + std::to_string(p.masked));
}

void default_sampling_params(minicpm_sampling_params & p) {
    p = {};
    p.size = sizeof(minicpm_sampling_params);
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.top_k = 0;
    p.repetition_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.penalty_last_n = -1;
    p.n_max_tokens = 0;
    p.n_top_logprobs = 0;
    p.logprobs = 0;
    p.ignore_eos = 0;
    p.speculative = 1;
    p.masked = 0;
    p.seed = 0;
}

sampler::sampler(const minicpm_sampling_params & params, int32_t n_vocab, const std::vector<int32_t> & eos_ids,
                 const int32_t * stop_ids, int32_t n_stop_ids, const int32_t * bias_ids, const float * bias_values,
                 int32_t n_bias, const int32_t * prompt, int32_t n_prompt)
    : params_(params), n_vocab_(n_vocab), rng_(params.seed) {
    if (n_stop_ids < 0 || (n_stop_ids > 0 && stop_ids == nullptr))
        invalid("stop_ids: NULL or negative count (" + std::to_string(n_stop_ids) + ")");
    if (n_bias < 0 || (n_bias > 0 && (bias_ids == nullptr || bias_values == nullptr)))
        invalid("bias_ids / bias_values: NULL or negative count (" + std::to_string(n_bias) + ")");
    for (int32_t i = 0; i < n_stop_ids; ++i) {
        if (stop_ids[i] < 0 || stop_ids[i] >= n_vocab)
            invalid("stop_ids[" + std::to_string(i) + "] = " + std::to_string(stop_ids[i]) + " is out of range [0, " +
                    std::to_string(n_vocab) + ")");
        stop_ids_.push_back(stop_ids[i]);
    }
    for (int32_t i = 0; i < n_bias; ++i) {
        if (bias_ids[i] < 0 || bias_ids[i] >= n_vocab)
            invalid("bias_ids[" + std::to_string(i) + "] = " + std::to_string(bias_ids[i]) + " is out of range [0, " +
                    std::to_string(n_vocab) + ")");
        // -inf forbids a token; +inf or NaN would turn the whole distribution into NaN.
        if (std::isnan(bias_values[i]) || bias_values[i] == std::numeric_limits<float>::infinity())
            invalid("bias_values[" + std::to_string(i) + "] must be finite or -inf, got " + num(bias_values[i]));
        bias_.emplace_back(bias_ids[i], bias_values[i]);
    }
    if (!params.ignore_eos) stop_ids_.insert(stop_ids_.end(), eos_ids.begin(), eos_ids.end());
    std::sort(stop_ids_.begin(), stop_ids_.end());

    track_history_ = params.penalty_last_n != 0 &&
                     (params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
                      params.frequency_penalty != 0.0f);
    if (track_history_) {
        const int32_t first = params.penalty_last_n > 0 ? std::max(0, n_prompt - params.penalty_last_n) : 0;
        for (int32_t i = 0; i < first; ++i) all_.emplace_back(prompt[i], false);  // outside the window for now
        for (int32_t i = first; i < n_prompt; ++i) push_history(prompt[i], false);
    }
}

bool sampler::is_stop(int32_t token) const { return std::binary_search(stop_ids_.begin(), stop_ids_.end(), token); }

void sampler::accept(int32_t token) {
    ++n_accepted_;
    if (track_history_) push_history(token, true);
}

void sampler::rollback(int32_t n) {
    if (n < 0 || n > n_accepted_)
        fail(MINICPM_STATUS_INTERNAL, "sampler: rollback of " + std::to_string(n) + " tokens, " +
                                          std::to_string(n_accepted_) + " accepted");
    n_accepted_ -= n;
    if (!track_history_) return;
    const int64_t window = params_.penalty_last_n;
    for (int32_t i = 0; i < n; ++i) {
        const auto [token, generated] = all_.back();
        all_.pop_back();
        history_.pop_back();
        forget(token, generated);
        // The oldest token that had slid out of the window comes back in.
        if (window > 0 && int64_t(all_.size()) >= window) {
            const auto back_in = all_[all_.size() - size_t(window)];
            history_.push_front(back_in);
            seen & s = seen_[back_in.first];
            s.n_all++;
            s.n_generated += back_in.second;
        }
    }
}

void sampler::forget(int32_t token, bool generated) {
    seen & o = seen_[token];
    o.n_all--;
    o.n_generated -= generated;
    if (o.n_all == 0) seen_.erase(token);
}

void sampler::push_history(int32_t token, bool generated) {
    all_.emplace_back(token, generated);
    history_.emplace_back(token, generated);
    seen & s = seen_[token];
    s.n_all++;
    s.n_generated += generated;
    if (params_.penalty_last_n > 0 && int64_t(history_.size()) > params_.penalty_last_n) {
        const auto [old, old_generated] = history_.front();
        history_.pop_front();
        forget(old, old_generated);
    }
}

void sampler::adjust(float * logits) const {
    for (const auto & [id, b] : bias_) logits[id] += b;
    const float rep = params_.repetition_penalty;
    for (const auto & [token, s] : seen_) {
        float l = logits[token];
        if (rep != 1.0f) l = l > 0.0f ? l / rep : l * rep;
        l -= params_.presence_penalty * float(s.n_generated > 0) + params_.frequency_penalty * float(s.n_generated);
        logits[token] = l;
    }
}

bool sampler::device_row(sample_row & row, std::vector<sample_adjust> & adjust) const {
    if (params_.n_top_logprobs > 0) return false;
    row = sample_row{};
    row.temperature = params_.temperature;
    row.top_k = params_.top_k;
    row.top_p = params_.top_p;
    row.min_p = params_.min_p;
    row.repetition_penalty = params_.repetition_penalty;
    row.presence_penalty = params_.presence_penalty;
    row.frequency_penalty = params_.frequency_penalty;
    row.seed = params_.seed;
    row.counter = uint64_t(n_accepted_);
    row.adjust_begin = int32_t(adjust.size());
    std::unordered_map<int32_t, size_t> at;
    for (const auto & [id, b] : bias_) {
        if (!at.emplace(id, adjust.size()).second) {
            adjust.resize(size_t(row.adjust_begin));
            return false;
        }
        adjust.push_back({id, b, 0, 0});
    }
    for (const auto & [token, s] : seen_) {
        const auto it = at.find(token);
        if (it == at.end()) {
            adjust.push_back({token, 0.0f, s.n_all, s.n_generated});
        } else {
            adjust[it->second].n_all = s.n_all;
            adjust[it->second].n_generated = s.n_generated;
        }
    }
    row.n_adjust = int32_t(adjust.size()) - row.adjust_begin;
    return true;
}

// Orders candidates by logit, then by lower id, so every selection is deterministic and top-k = 1 is greedy.
static bool better(const std::pair<float, int32_t> & a, const std::pair<float, int32_t> & b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Top-p in linear time: candidates go into buckets by their distance below the best logit (kBuckets over
// kSpan nats; everything further shares the last bucket), the bucket where the cumulative mass crosses p is
// found from per-bucket sums, and only that bucket is sorted. Same set as sorting everything.
static constexpr int   kBuckets = 4096;
static constexpr float kSpan = 32.0f;

static void keep_nucleus(std::vector<std::pair<float, int32_t>> & cand, const std::vector<uint16_t> & bucket,
                         float top_p, sampler_scratch & scratch) {
    std::vector<double> & mass = scratch.mass;
    mass.assign(kBuckets, 0.0);
    double total = 0.0;
    for (size_t i = 0; i < cand.size(); ++i) {
        mass[bucket[i]] += cand[i].first;
        total += cand[i].first;
    }
    const double target = double(top_p) * total;
    double       cum = 0.0;
    int32_t      cross = 0;
    while (cross < kBuckets - 1 && cum + mass[size_t(cross)] < target) cum += mass[size_t(cross++)];

    auto & kept = scratch.kept;
    auto & edge = scratch.edge;
    kept.clear();
    edge.clear();
    for (size_t i = 0; i < cand.size(); ++i) {
        if (bucket[i] < cross) {
            kept.push_back(cand[i]);
        } else if (bucket[i] == cross) {
            edge.push_back(cand[i]);
        }
    }
    std::sort(edge.begin(), edge.end(), better);
    for (const auto & c : edge) {
        kept.push_back(c);
        cum += c.first;
        if (cum >= target) break;
    }
    cand.swap(kept);
}

double sampler::distribution(const float * raw, sampler_scratch & scratch, int32_t * best_out,
                             const uint32_t * allowed) {
    const int32_t n = n_vocab_;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();

    const float * l = raw;
    if (!bias_.empty() || !seen_.empty() || allowed != nullptr) {
        scratch.logits.assign(raw, raw + n);
        adjust(scratch.logits.data());
        if (allowed != nullptr) {
            float * w = scratch.logits.data();
            for (int32_t i = 0; i < n; ++i)
                if (((allowed[i >> 5] >> (i & 31)) & 1u) == 0) w[i] = neg_inf;
        }
        l = scratch.logits.data();
    }
    int32_t best = -1;
    float   l_max = neg_inf;
    for (int32_t i = 0; i < n; ++i) {
        if (l[i] > l_max) {
            l_max = l[i];
            best = i;
        }
    }
    if (best < 0) fail(MINICPM_STATUS_INVALID_ARGUMENT, "sampling: every token is forbidden (logits all -inf or NaN)");
    *best_out = best;
    auto & cand = scratch.cand;
    cand.clear();
    if (params_.temperature <= 0.0f) return 0.0;

    const float inv_t = 1.0f / params_.temperature;
    if (params_.top_k > 0 && params_.top_k < n) {
        // Top-k as a heap whose front is the worst kept candidate: most tokens cost one comparison.
        const size_t k = size_t(params_.top_k);
        for (int32_t i = 0; i < n; ++i) {
            if (!(l[i] > neg_inf)) continue;
            const std::pair<float, int32_t> c((l[i] - l_max) * inv_t, i);
            if (cand.size() < k) {
                cand.push_back(c);
                std::push_heap(cand.begin(), cand.end(), better);
            } else if (better(c, cand.front())) {
                std::pop_heap(cand.begin(), cand.end(), better);
                cand.back() = c;
                std::push_heap(cand.begin(), cand.end(), better);
            }
        }
    } else {
        for (int32_t i = 0; i < n; ++i) {
            if (l[i] > neg_inf) cand.emplace_back((l[i] - l_max) * inv_t, i);
        }
    }
    // From here on cand[i].first is the weight exp((l - l_max) / T) in (0, 1]; the best token has 1.
    std::vector<uint16_t> & bucket = scratch.bucket;
    const bool              nucleus = params_.top_p < 1.0f;
    if (nucleus) bucket.resize(cand.size());
    for (size_t i = 0; i < cand.size(); ++i) {
        const float d = -cand[i].first;
        if (nucleus) bucket[i] = uint16_t(std::min(float(kBuckets - 1), d * (kBuckets / kSpan)));
        cand[i].first = std::exp(cand[i].first);
    }
    if (nucleus) keep_nucleus(cand, bucket, params_.top_p, scratch);
    if (params_.min_p > 0.0f) {
        // p_i / p_max = weight: the ratio does not change when the kept set is renormalized.
        const float thr = params_.min_p;
        cand.erase(std::remove_if(cand.begin(), cand.end(), [thr](const auto & c) { return c.first < thr; }),
                   cand.end());
    }
    double total = 0.0;
    for (const auto & c : cand) total += c.first;
    return total;
}

sample_result sampler::sample(const float * raw, sampler_scratch & scratch, const uint32_t * allowed) {
    sample_result out;
    int32_t       best = -1;
    const double  total = distribution(raw, scratch, &best, allowed);
    if (params_.temperature <= 0.0f) {
        out.token = best;
    } else {
        const auto & cand = scratch.cand;
        double       u = rng_.uniform() * total;
        out.token = cand.back().second;
        for (const auto & c : cand) {
            u -= c.first;
            if (u < 0.0) {
                out.token = c.second;
                break;
            }
        }
    }
    fill_logprobs(raw, out);
    return out;
}

void sampler::fill_logprobs(const float * raw, sample_result & out) const {
    const int32_t n = n_vocab_;
    if (params_.logprobs || params_.n_top_logprobs > 0) {
        float raw_max = raw[0];
        for (int32_t i = 1; i < n; ++i) raw_max = std::max(raw_max, raw[i]);
        double z = 0.0;
        for (int32_t i = 0; i < n; ++i) z += std::exp(raw[i] - raw_max);
        const float log_z = raw_max + float(std::log(z));
        out.logprob = raw[out.token] - log_z;

        // Insertion into a sorted array of at most 20: one compare per vocab entry in the common case.
        const int32_t k = params_.n_top_logprobs;
        int32_t       n_top = 0;
        for (int32_t i = 0; i < n && k > 0; ++i) {
            if (n_top == k && !(raw[i] > raw[out.top_tokens[k - 1]])) continue;
            int32_t j = n_top < k ? n_top++ : k - 1;
            while (j > 0 && raw[i] > raw[out.top_tokens[j - 1]]) {
                out.top_tokens[j] = out.top_tokens[j - 1];
                --j;
            }
            out.top_tokens[j] = i;
        }
        out.n_top = n_top;
        for (int32_t j = 0; j < n_top; ++j) out.top_logprobs[j] = raw[out.top_tokens[j]] - log_z;
    }
}

}  // namespace minicpm
