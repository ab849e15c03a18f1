// Requests for the speculative-decoding tests (test-eagle, test-spec-sparse): deterministic prompts, and a run
// of a batch through a scheduler that collects every request's tokens.
#pragma once

#include "engine/scheduler.h"
#include "minicpm.h"

#include <chrono>
#include <thread>
#include <vector>

namespace minicpm_test {

struct spec_request {
    std::vector<int32_t>    prompt;
    minicpm_sampling_params sp;
};

inline std::vector<int32_t> prompt_of(int32_t n, int32_t salt) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(4 + (i * 37 + salt * 101) % 500);
    return t;
}

// Submits every request at once (one continuous batch) and drains each to its finish; a request still running
// after timeout_s ends with the tokens it has.
inline std::vector<std::vector<int32_t>> run_all(minicpm::scheduler & s, const std::vector<spec_request> & reqs,
                                                 int timeout_s = 300) {
    std::vector<uint64_t> ids;
    for (const spec_request & r : reqs)
        ids.push_back(s.submit(r.prompt.data(), int32_t(r.prompt.size()), &r.sp, nullptr, 0, nullptr, nullptr, 0));
    std::vector<std::vector<int32_t>> out;
    for (uint64_t id : ids) {
        std::vector<int32_t> toks;
        bool                 done = false;
        minicpm_event        buf[16];
        const auto           deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
        while (!done && std::chrono::steady_clock::now() < deadline) {
            const int32_t n = s.drain(id, buf, 16, nullptr);
            for (int32_t i = 0; i < n; ++i) {
                if (buf[i].token >= 0) toks.push_back(buf[i].token);
                done |= buf[i].finish_reason != MINICPM_FINISH_NONE;
            }
            if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        out.push_back(toks);
    }
    return out;
}

}  // namespace minicpm_test
