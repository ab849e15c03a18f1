// The KV pool's sequence edits (prepare / truncate / fork / copy rows / free) and its side storage against a
// plain model: every sequence is a list of slot values, every block a refcount. Each written slot stores a
// unique value in K (all layers, heads, dims) so reads through the block tables can be checked exactly.
#include "core/backend.h"
#include "core/status.h"
#include "model/kv-cache.h"
#include "tiny-model.h"

#include <cstdio>
#include <map>
#include <random>
#include <vector>

using namespace minicpm;

namespace {

constexpr int32_t kB = MINICPM_KV_BLOCK_SIZE;

struct harness {
    model_config             cfg;
    std::unique_ptr<backend> be;
    std::unique_ptr<kv_pool> pool;
    std::vector<kv_seq>      seqs;
    std::vector<std::vector<float>> model;  // per sequence: the value of each committed slot
    float                    next_value = 1.0f;
    int32_t                  side_id = -1;

    harness(int32_t n_blocks, int32_t n_seqs) : seqs(size_t(n_seqs)), model(size_t(n_seqs)) {
        cfg.n_layer = 2;
        cfg.n_head_kv = 2;
        cfg.n_head_dim = 4;
        backend_options o;
        o.reference = true;
        o.n_threads = 1;
        be = make_backend(backend_kind::cpu, o);
        pool = std::make_unique<kv_pool>(*be, cfg, dtype::f32, n_blocks);
        side_id = pool->add_side(kB * sizeof(float));
    }

    float * slot_ptr(int32_t il, int32_t block, int32_t h, int32_t slot) {
        return (float *) pool->layer(il).k + ((int64_t(block) * cfg.n_head_kv + h) * kB + slot) * cfg.n_head_dim;
    }
    void write(int32_t s, int32_t slot, float value) {
        const int32_t b = seqs[size_t(s)].blocks[size_t(slot / kB)];
        for (int32_t il = 0; il < cfg.n_layer; ++il)
            for (int32_t h = 0; h < cfg.n_head_kv; ++h)
                for (int32_t d = 0; d < cfg.n_head_dim; ++d) slot_ptr(il, b, h, slot % kB)[d] = value;
    }
    float read(int32_t s, int32_t slot) {
        const int32_t b = seqs[size_t(s)].blocks[size_t(slot / kB)];
        const float v = slot_ptr(0, b, 0, slot % kB)[0];
        // Every layer and head must agree, or a copy moved only part of a slot.
        for (int32_t il = 0; il < cfg.n_layer; ++il)
            for (int32_t h = 0; h < cfg.n_head_kv; ++h)
                if (slot_ptr(il, b, h, slot % kB)[cfg.n_head_dim - 1] != v) return -1.0f;
        return v;
    }
    // Appends n new slots to sequence s; false when the pool is dry.
    bool append(int32_t s, int32_t n) {
        kv_seq & q = seqs[size_t(s)];
        if (!kv_seq_prepare(*pool, q, q.n_tokens, q.n_tokens + n)) return false;
        for (int32_t i = 0; i < n; ++i) {
            write(s, q.n_tokens + i, next_value);
            model[size_t(s)].push_back(next_value);
            next_value += 1.0f;
            // Side data derived from the rows (here: a copy of each slot's value), brought up to date from
            // side_valid on, as an attention variant keeps its compressed keys.
            const int32_t b = q.blocks[size_t((q.n_tokens + i) / kB)], slot = (q.n_tokens + i) % kB;
            for (int32_t j = pool->side_valid(b); j <= slot; ++j)
                ((float *) pool->side(side_id, 0, b))[j] = slot_ptr(0, b, 0, j)[0];
            pool->set_side_valid(b, slot + 1);
        }
        q.n_tokens += n;
        return true;
    }
    // Checks contents, refcounts and free count against the model; returns the number of problems.
    int verify(std::string & why) {
        int bad = 0;
        std::map<int32_t, int32_t> refs;
        for (size_t s = 0; s < seqs.size(); ++s) {
            const kv_seq & q = seqs[s];
            if (q.n_tokens != int32_t(model[s].size()) || q.blocks.size() != size_t(kv_blocks_for(q.n_tokens))) {
                ++bad;
                why = "sequence " + std::to_string(s) + " length/blocks disagree";
            }
            for (int32_t b : q.blocks) refs[b]++;
            for (int32_t i = 0; i < q.n_tokens && i < int32_t(model[s].size()); ++i)
                if (read(int32_t(s), i) != model[s][size_t(i)]) {
                    ++bad;
                    why = "sequence " + std::to_string(s) + " slot " + std::to_string(i) + " holds the wrong row";
                }
            // The side data of a block must describe the rows the block holds, for every slot it claims.
            for (size_t k = 0; k < q.blocks.size(); ++k) {
                const int32_t b = q.blocks[k];
                for (int32_t i = 0; i < pool->side_valid(b); ++i)
                    if (((const float *) pool->side(side_id, 0, b))[i] != slot_ptr(0, b, 0, i)[0]) {
                        ++bad;
                        why = "side data of block " + std::to_string(b) + " slot " + std::to_string(i) +
                              " is stale";
                    }
            }
        }
        for (const auto & r : refs)
            if (pool->refs(r.first) != r.second) {
                ++bad;
                why = "block " + std::to_string(r.first) + " refcount " + std::to_string(pool->refs(r.first)) +
                      ", held " + std::to_string(r.second) + " times";
            }
        if (pool->n_free() != pool->n_blocks() - int32_t(refs.size())) {
            ++bad;
            why = "free count " + std::to_string(pool->n_free()) + " with " + std::to_string(refs.size()) + " held";
        }
        return bad;
    }
};

void test_random_edits() {
    std::mt19937 rng(77);
    harness h(10, 4);  // small enough that appends and copies run the pool dry
    int n_ops[5] = {}, problems = 0, dry = 0;
    std::string why;
    for (int step = 0; step < 4000; ++step) {
        const int32_t s = int32_t(rng() % 4);
        kv_seq &      q = h.seqs[size_t(s)];
        const uint32_t op = rng() % 8;  // appends three times as often, so the pool fills up
        switch (op < 3 ? 0 : op - 2) {
            case 0:  // append 1..80 slots
                if (!h.append(s, 1 + int32_t(rng() % 80))) ++dry;
                ++n_ops[0];
                break;
            case 1: {  // truncate
                const int32_t n = q.n_tokens ? int32_t(rng() % uint32_t(q.n_tokens + 1)) : 0;
                kv_seq_truncate(*h.pool, q, n);
                h.model[size_t(s)].resize(size_t(n));
                ++n_ops[1];
                break;
            }
            case 2: {  // fork a prefix of another sequence into s
                const int32_t src = int32_t(rng() % 4);
                if (src == s) break;
                const kv_seq & from = h.seqs[size_t(src)];
                const int32_t  n = from.n_tokens ? int32_t(rng() % uint32_t(from.n_tokens + 1)) : 0;
                kv_seq_free(*h.pool, q);
                kv_seq_fork(*h.pool, from, n, q);
                h.model[size_t(s)].assign(h.model[size_t(src)].begin(), h.model[size_t(src)].begin() + n);
                ++n_ops[2];
                break;
            }
            case 3: {  // compact: keep a random increasing subset of the last up-to-20 slots
                if (q.n_tokens < 2) break;
                const int32_t base = std::max(0, q.n_tokens - 20);
                std::vector<int32_t> src, dst;
                for (int32_t i = base; i < q.n_tokens; ++i)
                    if (rng() % 2) src.push_back(i);
                for (size_t i = 0; i < src.size(); ++i) dst.push_back(base + int32_t(i));
                if (!kv_seq_prepare(*h.pool, q, base, q.n_tokens)) {
                    ++dry;
                    break;
                }
                kv_seq_copy_rows(*h.pool, q, src.data(), dst.data(), int32_t(src.size()));
                std::vector<float> & m = h.model[size_t(s)];
                for (size_t i = 0; i < src.size(); ++i) m[size_t(dst[i])] = m[size_t(src[i])];
                const int32_t keep = base + int32_t(src.size());
                kv_seq_truncate(*h.pool, q, keep);
                m.resize(size_t(keep));
                ++n_ops[3];
                break;
            }
            default:  // free
                kv_seq_free(*h.pool, q);
                h.model[size_t(s)].clear();
                ++n_ops[4];
        }
        problems += h.verify(why);
        if (problems) break;
    }
    for (kv_seq & q : h.seqs) kv_seq_free(*h.pool, q);
    const bool all_free = h.pool->n_free() == h.pool->n_blocks();
    CHECK(problems == 0 && all_free,
          "4000 random edits vs the plain model (append %d, truncate %d, fork %d, compact %d, free %d; pool dry %d "
          "times): %d problems%s%s; all blocks free at the end: %s",
          n_ops[0], n_ops[1], n_ops[2], n_ops[3], n_ops[4], dry, problems, why.empty() ? "" : ": ", why.c_str(),
          all_free ? "yes" : "no");
}

void test_copy_on_write_and_side() {
    harness h(8, 2);
    h.append(0, 100);  // blocks 0 (full) and 1 (36 slots)
    kv_seq_fork(*h.pool, h.seqs[0], 100, h.seqs[1]);
    h.model[1] = h.model[0];
    const int32_t shared = h.seqs[0].blocks[1];
    const int32_t valid_before = h.pool->side_valid(shared);
    CHECK(h.pool->refs(shared) == 2 && valid_before == 36, "fork shares blocks: refs %d, side_valid %d (want 2, 36)",
          h.pool->refs(shared), valid_before);
    // Writing slot 100 of the fork copies the shared partial block; the source keeps its block and side data.
    h.append(1, 1);
    const int32_t mine = h.seqs[1].blocks[1];
    std::string why;
    CHECK(mine != shared && h.pool->refs(shared) == 1 && h.pool->refs(mine) == 1 && h.pool->side_valid(shared) == 36 &&
              h.verify(why) == 0,
          "copy on write: fork's block %d, source's %d (refs %d / %d), source side_valid %d %s", mine, shared,
          h.pool->refs(mine), h.pool->refs(shared), h.pool->side_valid(shared), why.c_str());
    // Truncate then overwrite: side data must not claim the rewritten slots.
    kv_seq_truncate(*h.pool, h.seqs[0], 70);
    h.model[0].resize(70);
    kv_seq_prepare(*h.pool, h.seqs[0], 70, 71);
    CHECK(h.pool->side_valid(h.seqs[0].blocks[1]) == 6, "prepare lowers side_valid to the first written slot: %d (want 6)",
          h.pool->side_valid(h.seqs[0].blocks[1]));
    // A pool that runs dry in the middle of a prepare leaves the sequence as it was.
    kv_seq big;
    kv_seq_fork(*h.pool, h.seqs[0], 70, big);
    const int32_t free_before = h.pool->n_free();
    const bool ok = kv_seq_prepare(*h.pool, big, 0, 64 * 20);
    CHECK(!ok && h.pool->n_free() == free_before && big.blocks.size() == 2,
          "prepare beyond the pool fails and rolls back: free %d -> %d, blocks %zu", free_before, h.pool->n_free(),
          big.blocks.size());
    kv_seq_free(*h.pool, big);
    for (kv_seq & q : h.seqs) kv_seq_free(*h.pool, q);
    minicpm_test::expect_error("release of a free block", MINICPM_STATUS_INTERNAL, {"not allocated"},
                               [&] { h.pool->release(0); });
}

}  // namespace

int main() {
    test_random_edits();
    test_copy_on_write_and_side();
    return minicpm_test::finish();
}
