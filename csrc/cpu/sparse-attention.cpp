// The fast InfLLM v2 ops (see cpu/ops-sparse.h): one task per (row, KV head) on the thread pool; stage 1 with
// the group's heads in vector lanes (bitwise the reference's scores), stage 2 as online softmax over the
// selected 64-slot blocks only. Memory per task: O(kernels visible) floats for scores, plus one block.
// Inner loops: sparse-attention-impl.h, built for the baseline here and for AVX2 / AVX-512 in the -avx2 /
// -avx512 files, picked with the kernel family the backend runs.
#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-fast.h"
#include "cpu/ops-sparse.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
#include "cpu/sparse-attention-impl.h"
}  // namespace

namespace {

void sparse_scores_portable(float * s, const float * qT, const float * c, int32_t n, int32_t hd, float scale) {
    sp_scores_impl(s, qT, c, n, hd, scale);
}
void sparse_lse_portable(float * lse, const float * s, int32_t n) { sp_lse_impl(lse, s, n); }
void sparse_group_sum_portable(float * S, const float * s, const float * lse, int32_t n, int32_t G, bool acc) {
    sp_group_sum_impl(S, s, lse, n, G, acc);
}
void sparse_load_block_portable(float * kt, float * vb, const kv_layer & kv, int32_t block, int32_t hk, int32_t n) {
    sp_load_block_impl(kt, vb, kv, block, hk, n);
}
void sparse_block_heads_portable(float * o, float * m, float * l, const float * q, int32_t G, int32_t hd,
                                 const float * kt, const float * vb, int32_t n, float * sc) {
    sp_block_heads_impl(o, m, l, q, G, hd, kt, vb, n, sc);
}

const sparse_kernel_table k_sparse_portable = {sparse_scores_portable, sparse_lse_portable,
                                               sparse_group_sum_portable, sparse_load_block_portable,
                                               sparse_block_heads_portable};

}  // namespace

const sparse_kernel_table & sparse_kernels_for(const char * family) {
#if defined(MINICPM_X86)
    if (family != nullptr && std::strncmp(family, "avx512", 6) == 0) return sparse_kernels_avx512();
    if (family != nullptr && std::strcmp(family, "avx2") == 0) return sparse_kernels_avx2();
#endif
    (void) family;
    return k_sparse_portable;
}

void fast_kv_compress(thread_pool & tp, const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs,
                      const int32_t * from, int32_t n_segs) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim;
    struct task {
        int32_t seg, level, j0, j1;
    };
    std::vector<task> tasks;
    constexpr int32_t per_task = 16;
    for (int32_t s = 0; s < n_segs; ++s) {
        const int64_t n_end = int64_t(segs[s].n_past) + segs[s].n_rows;
        for (int32_t level = 0; level < 2; ++level) {
            const sparse_kernel_geom & g = level == 0 ? cc.c1 : cc.c2;
            const int64_t t = int64_t(from[s]) - g.ks + 1;
            const int32_t j0 = t <= 0 ? 0 : int32_t((t + g.st - 1) / g.st);
            for (int32_t j = j0; j < g.count(n_end); j += per_task)
                tasks.push_back({s, level, j, std::min(g.count(n_end), j + per_task)});
        }
    }
    auto run = [&](int64_t i, int) {
        const task &               tk = tasks[size_t(i)];
        const kv_segment &         sg = segs[tk.seg];
        const sparse_kernel_geom & g = tk.level == 0 ? cc.c1 : cc.c2;
        static thread_local std::vector<float> row;
        row.resize(size_t(hd));
        for (int32_t j = tk.j0; j < tk.j1; ++j)
            for (int32_t h = 0; h < nkv; ++h) {
                float * dst = cc.at(g, sg.blocks, h, j, hd);
                // The same sums in the same order as the reference: rows in order, per d.
                for (int32_t d = 0; d < hd; ++d) dst[d] = 0.0f;
                for (int32_t i = 0; i < g.ks; ++i) {
                    const int32_t p = g.st * j + i;
                    const int64_t off = kv_offset(kv, sg.blocks[p / 64], h, p % 64);
                    for (int32_t d = 0; d < hd; ++d) row[size_t(d)] = load_f32(kv.k, kv.type, off + d);
                    for (int32_t d = 0; d < hd; ++d) dst[d] += row[size_t(d)];
                }
                const float div = float(g.ks);
                for (int32_t d = 0; d < hd; ++d) dst[d] = dst[d] / div;
            }
    };
    if (tasks.size() <= 1) {
        for (size_t i = 0; i < tasks.size(); ++i) run(int64_t(i), 0);
    } else {
        tp.run(int64_t(tasks.size()), run);
    }
}

namespace {

// Per-thread scratch of one (row, KV head) task; grows with the context (linearly), never with its square.
struct sparse_scratch {
    std::vector<float>   qT, s1, s2, S, R, q, kt, vb, sc, t1, t2;
    std::vector<int32_t> order, sel, lim;
};

// Scores of the n visible kernels of level g (KV head hk) for the lanes of qT into s[n][16]: the cached ones,
// then the view's tail kernels (contiguous in tail). Each kernel's score is computed alone, so splitting the
// calls leaves the bits unchanged.
void level_scores(const sparse_kernel_table & kt, float * s, const float * qT, const kv_compressed & cc,
                  const sparse_kernel_geom & g, const int32_t * blocks, int32_t hk, int32_t n, int32_t hd,
                  float scale, const sparse_row_view & v, const std::vector<float> & tail) {
    const int32_t nc = std::min(n, g.count(v.n_fixed));
    // Kernels stored in one block are contiguous: one call per block.
    for (int32_t b = 0, j0 = 0; j0 < nc; ++b) {
        const int32_t j1 = std::min(nc, g.first_in(b + 1));
        if (j1 > j0) kt.scores(s + int64_t(j0) * 16, qT, cc.at(g, blocks, hk, j0, hd), j1 - j0, hd, scale);
        j0 = std::max(j0, j1);
    }
    if (n > nc) kt.scores(s + int64_t(nc) * 16, qT, tail.data(), n - nc, hd, scale);
}

void select_blocks_fast(const sparse_kernel_table & kt, sparse_scratch & w, const float * qrow, int32_t hk,
                        int32_t group, int32_t hd, const sparse_row_view & v, const kv_layer & kv,
                        const kv_compressed & cc, const int32_t * blocks, const sparse_attn_params & sp, float scale) {
    const int32_t p = v.p, qb = p / 64, nb = qb + 1, L = sp.window_blocks;
    w.sel.clear();
    if (p + 1 < sp.dense_len) {
        for (int32_t b = 0; b < nb; ++b) w.sel.push_back(b);
        return;
    }
    const int32_t n1 = cc.c1.count(int64_t(p) + 1), n2 = cc.c2.count(int64_t(p) + 1);
    w.S.assign(size_t(n1), 0.0f);
    w.s1.resize(size_t(n1) * 16 + 16);
    w.qT.resize(size_t(hd) * 16);
    const bool    c2 = sp.lse == sparse_lse::c2;
    const int32_t n_l = c2 ? n2 : n1;
    if (c2) w.s2.resize(size_t(n2) * 16 + 16);
    sparse_tail_kernels(w.t1, v, cc.c1, kv, blocks, hk);
    if (c2) sparse_tail_kernels(w.t2, v, cc.c2, kv, blocks, hk);
    for (int32_t c0 = 0; c0 < group && n1 > 0 && n_l > 0; c0 += 16) {
        const int32_t Gc = std::min(16, group - c0);
        std::fill(w.qT.begin(), w.qT.end(), 0.0f);
        for (int32_t i = 0; i < Gc; ++i) {
            const float * qh = qrow + int64_t(hk * group + c0 + i) * hd;
            for (int32_t d = 0; d < hd; ++d) w.qT[size_t(d) * 16 + size_t(i)] = qh[d];
        }
        level_scores(kt, w.s1.data(), w.qT.data(), cc, cc.c1, blocks, hk, n1, hd, scale, v, w.t1);
        if (c2) level_scores(kt, w.s2.data(), w.qT.data(), cc, cc.c2, blocks, hk, n2, hd, scale, v, w.t2);
        float lse[16];
        kt.lse(lse, c2 ? w.s2.data() : w.s1.data(), n_l);
        kt.group_sum(w.S.data(), w.s1.data(), lse, n1, Gc, true);
    }
    const int32_t ps = 64 / sp.kernel_stride;
    w.R.assign(size_t(nb), -INFINITY);
    for (int32_t b = 0; b < nb; ++b) {
        float r = -INFINITY;
        for (int32_t j = std::max(0, ps * b - 1); j <= ps * b + ps - 1 && j < n1; ++j) r = std::max(r, w.S[size_t(j)]);
        if (sp.variant == sparse_variant::hf) {
            if (b < sp.init_blocks) r = INFINITY;
            else if (b > qb - L && b <= qb) r = -INFINITY;
        } else if (b < sp.init_blocks || (b >= qb - L && b <= qb)) {
            r = INFINITY;
        }
        w.R[size_t(b)] = r;
    }
    const int32_t K = std::min(sp.variant == sparse_variant::hf ? sp.topk : sp.topk + L, nb);
    w.order.resize(size_t(nb));
    for (int32_t b = 0; b < nb; ++b) w.order[size_t(b)] = b;
    const float * R = w.R.data();
    auto before = [R](int32_t a, int32_t b) { return R[a] > R[b] || (R[a] == R[b] && a < b); };
    if (K < nb) std::nth_element(w.order.begin(), w.order.begin() + K, w.order.end(), before);
    // w.lim holds the "selected" flags here; the caller reuses it for the visible slots per selected block.
    w.lim.assign(size_t(nb), 0);
    for (int32_t i = 0; i < K; ++i) {
        const int32_t b = w.order[size_t(i)];
        if (sp.variant == sparse_variant::hf ? b < qb : b <= qb) w.lim[size_t(b)] = 1;
    }
    if (sp.variant == sparse_variant::hf)
        for (int32_t b = std::max(0, qb - L + 1); b <= qb; ++b) w.lim[size_t(b)] = 1;
    for (int32_t b = 0; b < nb; ++b)
        if (w.lim[size_t(b)]) w.sel.push_back(b);
}

// Stage 2 input for a block of a tree row's view that holds tail slots: its first n slots, the committed ones
// (slots below n_base) copied from the block loaded into bkt / bvb, the row's own ones converted from the pool
// slots they live in as load_block converts them (bitwise the same values; zeros past n).
void gather_block(float * kt, float * vb, const float * bkt, const float * bvb, int32_t n_base, const kv_layer & kv,
                  const int32_t * blocks, const sparse_row_view & v, int32_t b, int32_t hk, int32_t n) {
    const int32_t hd = kv.head_dim;
    std::memcpy(kt, bkt, size_t(hd) * 64 * 4);
    std::memcpy(vb, bvb, size_t(std::min(n_base, n)) * size_t(hd) * 4);
    for (int32_t j = n_base; j < 64; ++j) {
        if (j >= n) {
            for (int32_t d = 0; d < hd; ++d) kt[d * 64 + j] = 0.0f;
            continue;
        }
        const int32_t t = v.slot(64 * b + j);
        const int64_t off = kv_offset(kv, blocks[t / 64], hk, t % 64);
        for (int32_t d = 0; d < hd; ++d) {
            kt[d * 64 + j] = load_f32(kv.k, kv.type, off + d);
            vb[j * hd + d] = load_f32(kv.v, kv.type, off + d);
        }
    }
}

}  // namespace

void fast_sparse_attention(const cpu_kernel_table & ktab, thread_pool & tp, float * out, const float * q,
                           const kv_layer & kv, const kv_compressed & cc, const kv_segment * segs, int32_t n_segs,
                           int32_t n_head, float scale, const sparse_attn_params & sp, uint64_t * selected,
                           int32_t sel_words) {
    sparse_check_args(kv, segs, n_segs, n_head, sp, selected, sel_words);
    const sparse_kernel_table & kt = sparse_kernels_for(ktab.name);
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim, group = n_head / nkv;
    // Tasks: (segment, up to k_rows consecutive rows, KV head). The rows of a task share each KV block they
    // select: it is converted once and every row that selected it consumes it (prefill); decode rows are tasks
    // of their own. A tree's rows share the blocks of committed slots; a block holding slots of a row's own
    // sequence past them (sparse_row_view) is gathered per row. Trees are split finely enough to keep every
    // thread busy.
    constexpr int32_t k_rows = 16;
    struct task {
        int32_t seg, r0, r1, hk;
    };
    std::vector<task> tasks;
    sparse_row_view   v;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        const int32_t step = sg.mask == nullptr ? k_rows
                                                : std::clamp(sg.n_rows * nkv / std::max(1, tp.size()), 1, k_rows);
        for (int32_t r0 = 0; r0 < sg.n_rows; r0 += step) {
            const int32_t r1 = std::min(sg.n_rows, r0 + step);
            bool          any = sg.mask == nullptr;  // a tree chunk whose rows all go to the dense op is no task
            for (int32_t r = r0; r < r1 && !any; ++r) {
                sparse_row_view_of(v, sg, r);
                any = v.p + 1 >= sp.dense_len;
            }
            if (any)
                for (int32_t hk = 0; hk < nkv; ++hk) tasks.push_back({s, r0, r1, hk});
        }
    }
    const int32_t G16 = std::min(group, 16);
    tp.run(int64_t(tasks.size()), [&](int64_t i, int) {
        static thread_local sparse_scratch w;
        static thread_local std::vector<uint64_t> row_bits, uni;
        static thread_local std::vector<float> st_o, st_m, st_l, qs;
        static thread_local std::vector<sparse_row_view> views;
        static thread_local std::vector<char> skip;
        static thread_local std::vector<float> bkt, bvb;  // a tree's block with tail slots: its committed part
        const task &       t = tasks[size_t(i)];
        const kv_segment & sg = segs[t.seg];
        const int32_t      R = t.r1 - t.r0;
        views.resize(size_t(R));
        skip.assign(size_t(R), 0);
        int32_t p_last = 0;
        for (int32_t r = 0; r < R; ++r) {
            sparse_row_view_of(views[size_t(r)], sg, t.r0 + r);
            skip[size_t(r)] = sg.mask != nullptr && views[size_t(r)].p + 1 < sp.dense_len;  // the dense op's row
            if (!skip[size_t(r)]) p_last = std::max(p_last, views[size_t(r)].p);
        }
        const int32_t words = p_last / 64 / 64 + 1;
        row_bits.assign(size_t(R) * words, 0);
        uni.assign(size_t(words), 0);
        for (int32_t r = t.r0; r < t.r1; ++r) {
            if (skip[size_t(r - t.r0)]) continue;
            const int64_t row = sg.row_begin + r;
            select_blocks_fast(kt, w, q + row * n_head * hd, t.hk, group, hd, views[size_t(r - t.r0)], kv, cc,
                               sg.blocks, sp, scale);
            uint64_t * bits = row_bits.data() + size_t(r - t.r0) * words;
            for (int32_t b : w.sel) bits[b / 64] |= uint64_t(1) << (b % 64);
            for (int32_t k = 0; k < words; ++k) uni[size_t(k)] |= bits[k];
            if (selected != nullptr) {
                uint64_t * out_bits = selected + (row * nkv + t.hk) * sel_words;
                std::memset(out_bits, 0, size_t(sel_words) * 8);
                std::memcpy(out_bits, bits, size_t(words) * 8);
            }
        }
        // Running softmax state per (row, head of the group), and the scaled queries.
        st_o.assign(size_t(R) * group * hd, 0.0f);
        st_m.assign(size_t(R) * group, -INFINITY);
        st_l.assign(size_t(R) * group, 0.0f);
        qs.resize(size_t(R) * group * hd);
        for (int32_t r = 0; r < R; ++r) {
            const float * qh = q + ((sg.row_begin + t.r0 + r) * int64_t(n_head) + int64_t(t.hk) * group) * hd;
            for (int64_t e = 0; e < int64_t(group) * hd; ++e) qs[size_t(r) * group * hd + size_t(e)] = qh[e] * scale;
        }
        w.kt.resize(size_t(hd) * 64);
        w.vb.resize(size_t(hd) * 64);
        bkt.resize(size_t(hd) * 64);
        bvb.resize(size_t(hd) * 64);
        w.sc.resize(64);
        for (int32_t wd = 0; wd < words; ++wd)
            for (uint64_t bitset = uni[size_t(wd)]; bitset != 0; bitset &= bitset - 1) {
                const int32_t b = wd * 64 + __builtin_ctzll(bitset), n_load = std::min(64, p_last - 64 * b + 1);
                // Committed slots only (every slot of an unmasked segment is its own): one load for all rows.
                // Otherwise its committed part is loaded once and each row adds its own slots to a copy.
                const bool    shared = sg.mask == nullptr || 64 * b + n_load <= sg.n_past;
                const int32_t n_base = shared ? n_load : std::max(0, sg.n_past - 64 * b);
                kt.load_block(shared ? w.kt.data() : bkt.data(), shared ? w.vb.data() : bvb.data(), kv, sg.blocks[b],
                              t.hk, n_base);
                for (int32_t r = 0; r < R; ++r) {
                    if (!((row_bits[size_t(r) * words + size_t(wd)] >> (b % 64)) & 1)) continue;
                    const int32_t n = std::min(64, views[size_t(r)].p - 64 * b + 1);
                    if (!shared)
                        gather_block(w.kt.data(), w.vb.data(), bkt.data(), bvb.data(), n_base, kv, sg.blocks,
                                     views[size_t(r)], b, t.hk, n);
                    for (int32_t c0 = 0; c0 < group; c0 += G16) {
                        const size_t at = size_t(r) * group + size_t(c0);
                        kt.block_heads(st_o.data() + at * hd, st_m.data() + at, st_l.data() + at, qs.data() + at * hd,
                                       std::min(G16, group - c0), hd, w.kt.data(), w.vb.data(), n, w.sc.data());
                    }
                }
            }
        for (int32_t r = 0; r < R; ++r) {
            if (skip[size_t(r)]) continue;
            float * dst = out + ((sg.row_begin + t.r0 + r) * int64_t(n_head) + int64_t(t.hk) * group) * hd;
            for (int32_t h = 0; h < group; ++h) {
                const float inv = 1.0f / st_l[size_t(r) * group + size_t(h)];
                for (int32_t d = 0; d < hd; ++d) dst[int64_t(h) * hd + d] = st_o[(size_t(r) * group + size_t(h)) * hd + size_t(d)] * inv;
            }
        }
    });
}

}  // namespace minicpm
