// Device sampling: one thread block per logits row does what engine/sampler.cpp does on the host (bias and
// penalties, greedy argmax with the lowest id on ties, temperature, top-k, top-p, min-p, a draw) and leaves
// only the token and its logprob to copy back.
//
// Selections are thresholds found by bisection over the bits of an order-preserving 32-bit key of
// x = (l - l_max) / T, each step one counting (or mass-summing) pass over the row, so nothing is sorted:
//   top-k: the largest key with at least k keys above or at it, ties at it cut by id (as the host);
//   top-p: the largest key whose mass at or above it reaches top_p of the total, ties at it cut by id until
//   the mass is reached (as the host).
// Random numbers: Philox4x32-10 keyed by the request's seed at its draw counter (counter-based, so a row's
// draw does not depend on the batch it runs in).
#include "cuda/ops.cuh"

namespace minicpm {
namespace cuda {

namespace {

constexpr int k_sample_threads = 1024;
constexpr int k_sample_warps = k_sample_threads / k_warp;

// 0 marks a token that is out; every real key is above it.
__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Block-wide reductions for 1024 threads; every thread gets the result.
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T * shared) {
    for (int o = k_warp / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
    __syncthreads();  // shared may still be read by the previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T r = shared[0];
    for (int i = 1; i < k_sample_warps; ++i) r = op(r, shared[i]);
    return r;
}

struct reduce_space {
    float    f[k_sample_warps];
    double   d[k_sample_warps];
    int32_t  i[k_sample_warps];
    uint64_t u[k_sample_warps];
};

__device__ int32_t count_at_least(const uint32_t * key, int32_t V, uint32_t thr, reduce_space & rs) {
    int32_t c = 0;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) c += key[i] >= thr;
    return block_reduce(c, [](int32_t a, int32_t b) { return a + b; }, rs.i);
}

__device__ double mass_at_least(const uint32_t * key, int32_t V, uint32_t thr, reduce_space & rs) {
    double m = 0.0;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x)
        if (key[i] >= thr) m += expf(key_value(key[i]));
    return block_reduce(m, [](double a, double b) { return a + b; }, rs.d);
}

// Cuts the row at key thr: every key below it, and the keys equal to it from id limit L on, where L is the
// smallest limit with enough(number of ties below L) (the host keeps ties in id order).
template <typename F> __device__ void cut_at(uint32_t * key, int32_t V, uint32_t thr, F enough, reduce_space & rs) {
    int32_t lo = 0, hi = V;
    while (lo < hi) {
        const int32_t mid = (lo + hi) / 2;
        int32_t       c = 0;
        for (int32_t i = threadIdx.x; i < mid; i += blockDim.x) c += key[i] == thr;
        if (enough(block_reduce(c, [](int32_t a, int32_t b) { return a + b; }, rs.i))) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x)
        if (key[i] < thr || (key[i] == thr && i >= lo)) key[i] = 0u;
    __syncthreads();
}

__device__ uint4 philox(uint64_t seed, uint64_t counter) {
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; ++r) {
        const uint32_t lo0 = 0xD2511F53u * c0, hi0 = __umulhi(0xD2511F53u, c0);
        const uint32_t lo1 = 0xCD9E8D57u * c2, hi1 = __umulhi(0xCD9E8D57u, c2);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return make_uint4(c0, c1, c2, c3);
}

// 1024 threads a block: at most 64 registers a thread, which the bounds make the compiler keep to (a launch
// of a kernel that uses more fails with "too many resources requested").
__global__ void __launch_bounds__(k_sample_threads) sample_kernel(uint32_t * keys, const float * logits, int32_t V, const sample_row * rows,
                              const sample_adjust * adjust, sample_out * out) {
    __shared__ reduce_space rs;
    __shared__ double       part[k_sample_threads];
    __shared__ int32_t      owner, picked;
    __shared__ double       rest;
    const int64_t     r = blockIdx.x;
    const sample_row  p = rows[r];
    const float *     raw = logits + r * V;
    uint32_t *        key = keys + r * V;
    const auto fmax_op = [](float a, float b) { return fmaxf(a, b); };

    // logprob normaliser of the raw row.
    float mx = -INFINITY;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, raw[i]);
    const float raw_max = block_reduce(mx, fmax_op, rs.f);
    double z = 0.0;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) z += expf(raw[i] - raw_max);
    const double z_all = block_reduce(z, [](double a, double b) { return a + b; }, rs.d);

    // Adjusted logits (kept as floats in the key row for now), bias then penalties in the host's float order.
    float * adj = (float *) key;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) adj[i] = raw[i];
    __syncthreads();
    for (int32_t e = threadIdx.x; e < p.n_adjust; e += blockDim.x) {
        const sample_adjust a = adjust[p.adjust_begin + e];
        float l = __fadd_rn(adj[a.token], a.bias);
        if (a.n_all > 0) {
            const float rep = p.repetition_penalty;
            if (rep != 1.0f) l = l > 0.0f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
            const float pen = __fadd_rn(__fmul_rn(p.presence_penalty, float(a.n_generated > 0)),
                                        __fmul_rn(p.frequency_penalty, float(a.n_generated)));
            l = __fsub_rn(l, pen);
        }
        adj[a.token] = l;
    }
    __syncthreads();

    // Argmax, lowest id among equals; (value, id) packed so one max-reduction finds it.
    float   bv = -INFINITY;
    int32_t bi = -1;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x)
        if (adj[i] > bv) {
            bv = adj[i];
            bi = i;
        }
    const uint64_t packed = bi < 0 ? 0 : (uint64_t(order_key(bv)) << 32) | uint64_t(0xffffffffu - uint32_t(bi));
    const uint64_t best = block_reduce(packed, [](uint64_t a, uint64_t b) { return a > b ? a : b; }, rs.u);
    const int32_t  best_id = best == 0 ? -1 : int32_t(0xffffffffu - uint32_t(best));
    const float    l_max = best == 0 ? -INFINITY : key_value(uint32_t(best >> 32));
    int32_t        token = best_id;

    if (best_id >= 0 && p.temperature > 0.0f) {
        const float inv_t = 1.0f / p.temperature;
        __syncthreads();  // every thread has read adj before it turns into keys
        for (int32_t i = threadIdx.x; i < V; i += blockDim.x) {
            const float l = adj[i];
            key[i] = l > -INFINITY ? order_key(__fmul_rn(__fsub_rn(l, l_max), inv_t)) : 0u;
        }
        __syncthreads();
        if (p.top_k > 0 && p.top_k < V && count_at_least(key, V, 1u, rs) > p.top_k) {
            uint32_t thr = 0;
            for (int b = 31; b >= 0; --b) {
                const uint32_t c = thr | (1u << b);
                if (count_at_least(key, V, c, rs) >= p.top_k) thr = c;
            }
            // Ties at thr: the lowest ids, as many as top_k still needs.
            const int32_t need = p.top_k - (thr == 0xffffffffu ? 0 : count_at_least(key, V, thr + 1, rs));
            cut_at(key, V, thr, [need](int32_t n_tied) { return n_tied >= need; }, rs);
        }
        if (p.top_p < 1.0f) {
            const double target = double(p.top_p) * mass_at_least(key, V, 1u, rs);
            uint32_t     thr = 0;
            for (int b = 31; b >= 0; --b) {
                const uint32_t c = thr | (1u << b);
                const double m = mass_at_least(key, V, c, rs);
                if (m >= target && m > 0.0) thr = c;
            }
            // Ties at thr: the lowest ids, at least one (top_p = 0 keeps the best token), until the mass reaches
            // the target, as the host adds its sorted candidates.
            const double above = thr == 0xffffffffu ? 0.0 : mass_at_least(key, V, thr + 1, rs);
            const float  w_thr = expf(key_value(thr));
            cut_at(key, V, thr, [=](int32_t n_tied) { return n_tied >= 1 && above + double(n_tied) * w_thr >= target; },
                   rs);
        }
        if (p.min_p > 0.0f) {  // weight = p_i / p_max, unchanged by renormalising
            for (int32_t i = threadIdx.x; i < V; i += blockDim.x)
                if (key[i] != 0u && expf(key_value(key[i])) < p.min_p) key[i] = 0u;
            __syncthreads();
        }
        // The draw: each thread owns a contiguous id range; thread 0 finds the range where u falls.
        const int32_t per = int32_t((V + blockDim.x - 1) / blockDim.x);
        const int32_t i0 = min(V, int32_t(threadIdx.x) * per), i1 = min(V, i0 + per);
        double own = 0.0;
        for (int32_t i = i0; i < i1; ++i)
            if (key[i] != 0u) own += expf(key_value(key[i]));
        part[threadIdx.x] = own;
        if (threadIdx.x == 0) picked = best_id;
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0;
            for (int t = 0; t < int(blockDim.x); ++t) total += part[t];
            const uint4  rnd = philox(p.seed, p.counter);
            const double u01 = double((uint64_t(rnd.x) << 21) | (rnd.y >> 11)) * 0x1.0p-53;
            double       u = u01 * total;
            owner = -1;
            int32_t last = -1;  // rounding past the end picks the last kept token, as the host does
            for (int t = 0; t < int(blockDim.x); ++t) {
                if (part[t] <= 0.0) continue;
                last = t;
                if (u < part[t]) {
                    owner = t;
                    break;
                }
                u -= part[t];
            }
            if (owner < 0 && last >= 0) {
                owner = last;
                u = part[last];
            }
            rest = u;
        }
        __syncthreads();
        if (int(threadIdx.x) == owner) {
            double  u = rest;
            int32_t pick = -1;
            for (int32_t i = i0; i < i1; ++i) {
                if (key[i] == 0u) continue;
                pick = i;
                u -= expf(key_value(key[i]));
                if (u < 0.0) break;
            }
            if (pick >= 0) picked = pick;
        }
        __syncthreads();
        token = picked;
    }
    if (threadIdx.x == 0) {
        out[r].token = token;
        out[r].logprob = token >= 0 ? float(double(raw[token] - raw_max) - log(z_all)) : 0.0f;
    }
}

}  // namespace

void launch_sample(cudaStream_t s, sample_out * out, uint32_t * keys, const float * logits, int32_t V,
                   const sample_row * rows, int32_t R, const sample_adjust * adjust) {
    if (R <= 0) return;
    sample_kernel<<<unsigned(R), k_sample_threads, 0, s>>>(keys, logits, V, rows, adjust, out);
    MINICPM_CUDA_LAUNCHED("sample");
}

}  // namespace cuda
}  // namespace minicpm
