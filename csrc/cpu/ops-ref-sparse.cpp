// The reference InfLLM v2 ops (see cpu/ops-sparse.h): INFLLM_V2.md steps 1-9 as plain loops, one query row and
// one KV head at a time. Step numbers below are that document's.
//
// Shape letters: T rows, nh query heads, nkv KV heads, G = nh / nkv, hd head dim; p = a row's slot,
// qb = p / 64, n1 / n2 = C1 / C2 kernels visible to p.
#include "core/status.h"
#include "cpu/cpu-common.h"
#include "cpu/ops-sparse.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace minicpm {

namespace {
#include "cpu/fast-exp.h"
}  // namespace

void sparse_check_args(const kv_layer & kv, const kv_segment * segs, int32_t n_segs, int32_t n_head,
                       const sparse_attn_params & sp, const uint64_t * selected, int32_t sel_words) {
    if (kv.n_head_kv <= 0 || n_head % kv.n_head_kv != 0)
        fail(MINICPM_STATUS_INTERNAL, "sparse attention: " + std::to_string(n_head) + " query heads over " +
                                          std::to_string(kv.n_head_kv) + " KV heads");
    if (k_sparse_block % sp.kernel_stride != 0 || sp.kernel_size < sp.kernel_stride)
        fail(MINICPM_STATUS_INTERNAL, "sparse attention: kernel_stride must divide 64 and not exceed kernel_size");
    for (int32_t s = 0; s < n_segs; ++s) {
        if (segs[s].mask != nullptr && segs[s].n_rows > k_max_tree_rows)
            fail(MINICPM_STATUS_INTERNAL, "sparse attention: a token tree of " + std::to_string(segs[s].n_rows) +
                                              " rows (at most " + std::to_string(k_max_tree_rows) + ")");
        if (selected != nullptr && (int64_t(segs[s].n_past) + segs[s].n_rows + 63) / 64 > 64 * int64_t(sel_words))
            fail(MINICPM_STATUS_INTERNAL, "sparse attention: selection buffer too small");
    }
}

void sparse_row_view_of(sparse_row_view & v, const kv_segment & sg, int32_t r) {
    v.tail.clear();
    if (sg.mask == nullptr) {
        v.p = sg.n_past + r;
        v.n_fixed = v.p + 1;
        return;
    }
    v.n_fixed = sg.n_past;
    for (int32_t i = 0; i < r; ++i)
        if ((sg.mask[r] >> i) & 1u) v.tail.push_back(sg.n_past + i);
    v.tail.push_back(sg.n_past + r);
    v.p = sg.n_past + int32_t(v.tail.size()) - 1;
}

int32_t sparse_tail_kernels(std::vector<float> & out, const sparse_row_view & v, const sparse_kernel_geom & g,
                            const kv_layer & kv, const int32_t * blocks, int32_t h) {
    const int32_t hd = kv.head_dim, j0 = g.count(v.n_fixed), n = g.count(int64_t(v.p) + 1) - j0;
    out.assign(size_t(std::max(n, 0)) * size_t(hd), 0.0f);
    for (int32_t j = j0; j < j0 + n; ++j) {
        float * sum = out.data() + size_t(j - j0) * size_t(hd);  // per d, the rows added in order
        for (int32_t i = 0; i < g.ks; ++i) {
            const int32_t t = v.slot(g.st * j + i);
            const int64_t off = kv_offset(kv, blocks[t / 64], h, t % 64);
            for (int32_t d = 0; d < hd; ++d) sum[d] += load_f32(kv.k, kv.type, off + d);
        }
        for (int32_t d = 0; d < hd; ++d) sum[d] = sum[d] / float(g.ks);
    }
    return std::max(n, 0);
}

// ---- step 2: compression -------------------------------------------------------------------------------------

void ref_kv_compress(const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs, const int32_t * from,
                     int32_t n_segs) {
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        const int64_t      n_end = int64_t(sg.n_past) + sg.n_rows;
        for (const sparse_kernel_geom * g : {&cc.c1, &cc.c2}) {
            // First kernel whose last slot st*j + ks - 1 is >= from[s].
            const int64_t t = int64_t(from[s]) - g->ks + 1;
            const int32_t j0 = t <= 0 ? 0 : int32_t((t + g->st - 1) / g->st);
            for (int32_t j = j0; j < g->count(n_end); ++j) {
                for (int32_t h = 0; h < nkv; ++h) {
                    float * dst = cc.at(*g, sg.blocks, h, j, hd);
                    for (int32_t d = 0; d < hd; ++d) {
                        float sum = 0.0f;
                        for (int32_t i = 0; i < g->ks; ++i) {
                            const int32_t p = g->st * j + i;
                            sum += load_f32(kv.k, kv.type, kv_offset(kv, sg.blocks[p / 64], h, p % 64) + d);
                        }
                        dst[d] = sum / float(g->ks);
                    }
                }
            }
        }
    }
}

// ---- steps 1, 3-8: block selection ---------------------------------------------------------------------------

namespace {

float dot(const float * a, const float * b, int32_t n) {
    float acc = 0.0f;
    for (int32_t d = 0; d < n; ++d) acc += a[d] * b[d];
    return acc;
}

// Kernel j of level g as the view sees it: cached, or one of its tail kernels (in tail).
const float * view_kernel(const kv_compressed & cc, const sparse_kernel_geom & g, const std::vector<float> & tail,
                          const sparse_row_view & v, const int32_t * blocks, int32_t h, int32_t j, int32_t hd) {
    const int32_t j0 = g.count(v.n_fixed);
    return j < j0 ? cc.at(g, blocks, h, j, hd) : tail.data() + size_t(j - j0) * size_t(hd);
}

// The blocks the view's row attends through KV head g, ascending. qrow = the row's nh * hd query values.
void select_blocks(std::vector<int32_t> & sel, const float * qrow, int32_t g, int32_t group, int32_t hd,
                   const sparse_row_view & v, const kv_layer & kv, const kv_compressed & cc, const int32_t * blocks,
                   const sparse_attn_params & sp, float scale) {
    const int32_t p = v.p, B = k_sparse_block, qb = p / B, nb = qb + 1, L = sp.window_blocks;
    sel.clear();
    // Step 1, per query: dense while p + 1 < dense_len.
    if (p + 1 < sp.dense_len) {
        for (int32_t b = 0; b < nb; ++b) sel.push_back(b);
        return;
    }
    // Steps 3-4: stage-1 scores over the visible C1 kernels, summed over the group's heads.
    const int32_t n1 = cc.c1.count(int64_t(p) + 1), n2 = cc.c2.count(int64_t(p) + 1);
    std::vector<float> S(static_cast<size_t>(n1), 0.0f), s(static_cast<size_t>(n1), 0.0f), t1, t2;
    sparse_tail_kernels(t1, v, cc.c1, kv, blocks, g);
    if (sp.lse == sparse_lse::c2) sparse_tail_kernels(t2, v, cc.c2, kv, blocks, g);
    for (int32_t hh = 0; hh < group; ++hh) {
        const float * qh = qrow + int64_t(g * group + hh) * hd;
        for (int32_t j = 0; j < n1; ++j)
            s[size_t(j)] = dot(qh, view_kernel(cc, cc.c1, t1, v, blocks, g, j, hd), hd) * scale;
        // lse over C1 (exact) or C2 (approximate); no visible kernel: the head adds nothing (INFLLM_V2.md D11).
        std::vector<float> l2;
        const std::vector<float> * lv = &s;
        if (sp.lse == sparse_lse::c2) {
            for (int32_t j = 0; j < n2; ++j)
                l2.push_back(dot(qh, view_kernel(cc, cc.c2, t2, v, blocks, g, j, hd), hd) * scale);
            lv = &l2;
        }
        if (lv->empty()) continue;
        float m = -INFINITY;
        for (float v : *lv) m = std::max(m, v);
        float sum = 0.0f;
        for (float v : *lv) sum += fast_exp(v - m);
        const float lse = m + std::log(sum);
        for (int32_t j = 0; j < n1; ++j) S[size_t(j)] += fast_exp(s[size_t(j)] - lse);
    }
    // Step 5: max-pool the kernels j in [ps b - 1, ps b + ps - 1] into block b (window ps + 1, padding 1).
    const int32_t ps = B / sp.kernel_stride;
    std::vector<float> R(size_t(nb), -INFINITY);
    for (int32_t b = 0; b < nb; ++b)
        for (int32_t j = std::max(0, ps * b - 1); j <= ps * b + ps - 1 && j < n1; ++j)
            R[size_t(b)] = std::max(R[size_t(b)], S[size_t(j)]);
    // Step 6: forced blocks.
    for (int32_t b = 0; b < nb; ++b) {
        if (sp.variant == sparse_variant::hf) {
            if (b < sp.init_blocks) R[size_t(b)] = INFINITY;
            else if (b > qb - L && b <= qb) R[size_t(b)] = -INFINITY;
        } else if (b < sp.init_blocks || (b >= qb - L && b <= qb)) {
            R[size_t(b)] = INFINITY;
        }
    }
    // Step 7: top-K by (R descending, index ascending), then the causal drop.
    const int32_t K = std::min(sp.variant == sparse_variant::hf ? sp.topk : sp.topk + L, nb);
    std::vector<int32_t> order(static_cast<size_t>(nb), 0);
    for (int32_t b = 0; b < nb; ++b) order[size_t(b)] = b;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return R[size_t(a)] > R[size_t(b)]; });
    std::vector<char> on(size_t(nb), 0);
    for (int32_t i = 0; i < K; ++i) {
        const int32_t b = order[size_t(i)];
        if (sp.variant == sparse_variant::hf ? b < qb : b <= qb) on[size_t(b)] = 1;
    }
    // Step 8: "hf" adds the sliding window of L blocks ending at qb.
    if (sp.variant == sparse_variant::hf)
        for (int32_t b = std::max(0, qb - L + 1); b <= qb; ++b) on[size_t(b)] = 1;
    for (int32_t b = 0; b < nb; ++b)
        if (on[size_t(b)]) sel.push_back(b);
}

}  // namespace

// ---- step 9: attention over the selected blocks --------------------------------------------------------------

void ref_sparse_attention(float * out, const float * q, const kv_layer & kv, const kv_compressed & cc,
                          const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale,
                          const sparse_attn_params & sp, uint64_t * selected, int32_t sel_words) {
    sparse_check_args(kv, segs, n_segs, n_head, sp, selected, sel_words);
    const int32_t nkv = kv.n_head_kv, hd = kv.head_dim, group = n_head / nkv;
    std::vector<int32_t> sel, slots;
    std::vector<float>   w;
    sparse_row_view      v;
    for (int32_t s = 0; s < n_segs; ++s) {
        const kv_segment & sg = segs[s];
        for (int32_t r = 0; r < sg.n_rows; ++r) {
            const int64_t row = sg.row_begin + r;
            sparse_row_view_of(v, sg, r);
            const int32_t p = v.p;
            if (sg.mask != nullptr && p + 1 < sp.dense_len) continue;  // the dense op's row (see core/backend.h)
            const float * qrow = q + row * n_head * hd;
            for (int32_t g = 0; g < nkv; ++g) {
                select_blocks(sel, qrow, g, group, hd, v, kv, cc, sg.blocks, sp, scale);
                if (selected != nullptr) {
                    uint64_t * bits = selected + (row * nkv + g) * sel_words;
                    std::memset(bits, 0, size_t(sel_words) * 8);
                    for (int32_t b : sel) bits[b / 64] |= uint64_t(1) << (b % 64);
                }
                slots.clear();
                for (int32_t b : sel)
                    for (int32_t t = b * 64; t < b * 64 + 64 && t <= p; ++t) slots.push_back(v.slot(t));
                w.assign(slots.size(), 0.0f);
                for (int32_t hh = 0; hh < group; ++hh) {
                    const int32_t h = g * group + hh;
                    const float * qh = qrow + int64_t(h) * hd;
                    float mx = -INFINITY;
                    for (size_t i = 0; i < slots.size(); ++i) {
                        const int32_t t = slots[i];
                        const int64_t off = kv_offset(kv, sg.blocks[t / 64], g, t % 64);
                        float acc = 0.0f;
                        for (int32_t d = 0; d < hd; ++d) acc += qh[d] * load_f32(kv.k, kv.type, off + d);
                        w[i] = acc * scale;
                        mx = std::max(mx, w[i]);
                    }
                    float sum = 0.0f;
                    for (float & x : w) {
                        x = std::exp(x - mx);
                        sum += x;
                    }
                    float * o = out + (row * n_head + h) * hd;
                    for (int32_t d = 0; d < hd; ++d) o[d] = 0.0f;
                    for (size_t i = 0; i < slots.size(); ++i) {
                        const int32_t t = slots[i];
                        const int64_t off = kv_offset(kv, sg.blocks[t / 64], g, t % 64);
                        for (int32_t d = 0; d < hd; ++d) o[d] += w[i] / sum * load_f32(kv.v, kv.type, off + d);
                    }
                }
            }
        }
    }
}

}  // namespace minicpm
