// The MiniCPM4 forward pass and the synchronous context on tiny random checkpoints: an independent float64
// forward written from MINICPM4.md, reference vs fast ops, chunked vs one-shot, batched vs alone, KV dtypes,
// errors that must leave the sequences untouched, and RoPE table values of the real configs.
#include "cpu/ops-fast.h"
#include "engine/context.h"
#include "model/config.h"
#include "model/minicpm4.h"
#include "tiny-model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

using namespace minicpm;
using minicpm_test::tensor_value;

// Under AddressSanitizer (MINICPM_SANITIZE) an impossible allocation must fail like it does in production (the
// KV pool test expects OUT_OF_MEMORY) instead of ending the process; without ASan this function is unused.
extern "C" __attribute__((visibility("default"), used)) const char * __asan_default_options() {
    return "allocator_may_return_null=1";
}

static const int32_t N_THREADS = 2;
// The fast ops' tolerance is that of the kernel family that runs (MINICPM_KERNELS forces one): families that
// round activations to bf16 (AMX, vdpbf16ps, bfdot/bfmmla: 2^-8 per element, averaged down by the sums) get 1e-2;
// exact families (f32 products, only summation order differs; measured <= 3e-7) get 1e-5.
static const cpu_kernel_table & fast_family() {
    const char * forced = std::getenv("MINICPM_KERNELS");
    const cpu_kernel_table * kt = forced && *forced ? cpu_kernel_by_name(forced) : nullptr;
    return kt ? *kt : cpu_kernels();
}
static const double TOL_FAST = cpu_kernels_exact(fast_family()) ? 1e-5 : 1e-2;

// ---- helpers ---------------------------------------------------------------------------------------------------

struct diff {
    double max_abs = 0;
    double max_ref = 0;
    double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

template <typename A, typename B> static diff compare(const A & got, const B & ref) {
    diff d;
    if (got.size() != ref.size()) {
        d.max_abs = INFINITY;
        return d;
    }
    for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(double(got[i]) - double(ref[i]));
        d.max_abs = std::isnan(e) ? INFINITY : std::max(d.max_abs, e);
        d.max_ref = std::max(d.max_ref, std::fabs(double(ref[i])));
    }
    return d;
}

static bool check_close(const char * what, const diff & d, double tol_rel) {
    return CHECK(d.rel() <= tol_rel, "%-48s max abs %.3e  max |ref| %.3e  rel %.3e (tol %.1e)", what, d.max_abs,
                 d.max_ref, d.rel(), tol_rel);
}

static std::unique_ptr<model> tiny_model(const minicpm_test::tiny_model_spec & spec, const char * tag) {
    const std::string dir = minicpm_test::make_temp_dir(tag);
    minicpm_test::write_tiny_model(dir, spec);
    std::unique_ptr<model> m = model::load(dir, true, MINICPM_BACKEND_CPU);
    minicpm_test::remove_dir(dir);  // the mapping stays valid after unlink
    return m;
}

static minicpm_context_params ctx_params(bool reference, int32_t n_seq = 1, int32_t n_chunk = 0,
                                         int32_t kv = MINICPM_DTYPE_F32, int32_t n_ctx = 0) {
    minicpm_context_params p;
    minicpm_context_default_params(&p);
    p.use_reference = reference ? 1 : 0;
    p.n_seq_max = n_seq;
    p.n_chunk = n_chunk;
    p.kv_dtype = kv;
    p.n_ctx = n_ctx;
    p.n_threads = N_THREADS;
    return p;
}

static std::vector<int32_t> prompt(int32_t n, int32_t n_vocab, uint32_t seed) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
        seed = seed * 1664525u + 1013904223u;
        t[size_t(i)] = int32_t((seed >> 8) % uint32_t(n_vocab));
    }
    return t;
}

// Logits after every token of one sequence, in one eval call.
static std::vector<float> eval_all(context & ctx, int32_t n_vocab, const std::vector<int32_t> & toks, int32_t seq = 0) {
    std::vector<int32_t> seqs(toks.size(), seq);
    std::vector<uint8_t> out(toks.size(), 1);
    std::vector<float>   logits(toks.size() * size_t(n_vocab));
    const int32_t n = ctx.eval(toks.data(), seqs.data(), out.data(), int32_t(toks.size()), logits.data(),
                               int64_t(logits.size()));
    if (n != int32_t(toks.size())) logits.clear();
    return logits;
}

// ---- an independent float64 forward (MINICPM4.md sections 3-4) -------------------------------------------------

static std::vector<double> naive_forward(const model & m, const std::vector<int32_t> & toks) {
    const model_config &  c = m.config();
    const model_weights & w = m.weights();
    const int64_t T = int64_t(toks.size()), H = c.n_embd, nh = c.n_head, nkv = c.n_head_kv, hd = c.n_head_dim;
    const int64_t F = c.n_ff, V = c.n_vocab, half = hd / 2;

    auto matvec = [](const tensor_desc & W, const double * x, double * y) {
        for (int64_t n = 0; n < W.rows; ++n) {
            double s = 0;
            for (int64_t k = 0; k < W.cols; ++k) s += x[k] * double(tensor_value(W, n * W.cols + k));
            y[n] = s;
        }
    };
    auto rms_norm = [&](const double * x, const tensor_desc & g, double * y) {
        double ms = 0;
        for (int64_t i = 0; i < H; ++i) ms += x[i] * x[i];
        const double r = 1.0 / std::sqrt(ms / double(H) + double(c.rms_norm_eps));
        for (int64_t i = 0; i < H; ++i) y[i] = x[i] * r * double(tensor_value(g, i));
    };
    const bool use_long = c.n_ctx_orig > 0 && c.n_ctx_train > c.n_ctx_orig;
    const std::vector<float> & f = use_long ? c.rope_long_factor : c.rope_short_factor;
    double mscale = 1.0;
    if (use_long) {
        const double s = double(c.n_ctx_train) / double(c.n_ctx_orig);
        mscale = std::sqrt(1.0 + std::log(s) / std::log(double(c.n_ctx_orig)));
    }
    auto rope = [&](double * u, int64_t p) {
        for (int64_t i = 0; i < half; ++i) {
            const double fi = f.empty() ? 1.0 : double(f[size_t(i)]);
            const double th = double(p) / fi * std::pow(double(c.rope_theta), -double(2 * i) / double(hd));
            const double cs = std::cos(th) * mscale, sn = std::sin(th) * mscale;
            const double a = u[i], b = u[i + half];
            u[i] = a * cs - b * sn;
            u[i + half] = b * cs + a * sn;
        }
    };

    const double r = double(c.scale_depth) / std::sqrt(double(c.n_layer));
    std::vector<double> x(T * H), a(H), q(T * nh * hd), K(T * nkv * hd), Vv(T * nkv * hd), att(nh * hd), o(H),
        g(F), u(F), sc(T);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < H; ++i)
            x[size_t(t * H + i)] = double(tensor_value(w.embed, toks[size_t(t)] * H + i)) * double(c.scale_emb);
    for (int32_t il = 0; il < c.n_layer; ++il) {
        const layer_weights & lw = w.layers[size_t(il)];
        for (int64_t t = 0; t < T; ++t) {
            rms_norm(&x[size_t(t * H)], lw.attn_norm, a.data());
            matvec(lw.wq, a.data(), &q[size_t(t * nh * hd)]);
            matvec(lw.wk, a.data(), &K[size_t(t * nkv * hd)]);
            matvec(lw.wv, a.data(), &Vv[size_t(t * nkv * hd)]);
            for (int64_t h = 0; h < nh; ++h) rope(&q[size_t((t * nh + h) * hd)], t);
            for (int64_t h = 0; h < nkv; ++h) rope(&K[size_t((t * nkv + h) * hd)], t);
        }
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t h = 0; h < nh; ++h) {
                const int64_t kh = h / (nh / nkv);
                const double * qh = &q[size_t((t * nh + h) * hd)];
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j <= t; ++j) {
                    double s = 0;
                    for (int64_t d = 0; d < hd; ++d) s += qh[d] * K[size_t((j * nkv + kh) * hd + d)];
                    sc[size_t(j)] = s / std::sqrt(double(hd));
                    mx = std::max(mx, sc[size_t(j)]);
                }
                for (int64_t j = 0; j <= t; ++j) sum += (sc[size_t(j)] = std::exp(sc[size_t(j)] - mx));
                for (int64_t d = 0; d < hd; ++d) {
                    double s = 0;
                    for (int64_t j = 0; j <= t; ++j) s += sc[size_t(j)] * Vv[size_t((j * nkv + kh) * hd + d)];
                    att[size_t(h * hd + d)] = s / sum;
                }
            }
            matvec(lw.wo, att.data(), o.data());
            double * xt = &x[size_t(t * H)];
            for (int64_t i = 0; i < H; ++i) xt[i] += r * o[size_t(i)];
            rms_norm(xt, lw.ffn_norm, a.data());
            matvec(lw.w_gate, a.data(), g.data());
            matvec(lw.w_up, a.data(), u.data());
            for (int64_t i = 0; i < F; ++i)
                g[size_t(i)] = g[size_t(i)] / (1.0 + std::exp(-g[size_t(i)])) * u[size_t(i)];
            matvec(lw.w_down, g.data(), o.data());
            for (int64_t i = 0; i < H; ++i) xt[i] += r * o[size_t(i)];
        }
    }
    const double divisor = c.dim_model_base > 0 ? double(c.n_embd) / double(c.dim_model_base) : 1.0;
    std::vector<double> logits(T * V);
    for (int64_t t = 0; t < T; ++t) {
        rms_norm(&x[size_t(t * H)], w.norm, a.data());
        for (int64_t i = 0; i < H; ++i) a[size_t(i)] /= divisor;
        matvec(w.head, a.data(), &logits[size_t(t * V)]);
    }
    return logits;
}

// ---- RoPE tables of the real configs (MINICPM4.md section 4 values) ---------------------------------------------

static model_config real_config(const char * which) {
    const std::string paths[] = {std::string(MINICPM_SOURCE_DIR) + "/assets/minicpm4/config-" + which + "/config.json",
                                 std::string(MINICPM_SOURCE_DIR) + "/../shared/fixtures/minicpm4-config/" + which +
                                     "/config.json"};
    for (const std::string & p : paths) {
        std::ifstream f(p);
        if (!f) continue;
        std::stringstream ss;
        ss << f.rdbuf();
        return parse_config(ss.str(), p);
    }
    throw std::runtime_error(std::string("real config not found for ") + which);
}

// theta_i(p) recovered from the table (valid while |theta| < pi), and the raw cos/sin entries.
static double table_theta(const std::vector<float> & t, int32_t hd, int32_t p, int32_t i) {
    return std::atan2(double(t[size_t(p) * hd + 2 * i + 1]), double(t[size_t(p) * hd + 2 * i]));
}

static void test_rope_tables() {
    std::printf("-- rope tables of the real configs\n");
    {
        const model_config c = real_config("0.5b");
        const std::vector<float> t = build_rope_table(c);
        const int32_t hd = c.n_head_dim;
        CHECK(t.size() == size_t(c.n_ctx_train) * hd, "0.5B table covers %d positions x %d", c.n_ctx_train, hd);
        const double f0 = table_theta(t, hd, 1, 0), f1 = table_theta(t, hd, 1, 1);
        CHECK(std::fabs(f0 - 0.999564111) < 1e-7, "0.5B inv freq i=0: %.9f (want 0.999564111)", f0);
        CHECK(std::fabs(f1 - 0.702908754) < 1e-7, "0.5B inv freq i=1: %.9f (want 0.702908754)", f1);
        const double cs = t[1000 * size_t(hd)], sn = t[1000 * size_t(hd) + 1];
        CHECK(std::fabs(cs - 0.858928323) < 2e-6 && std::fabs(sn - 0.512095809) < 2e-6,
              "0.5B p=1000 i=0: cos %.9f sin %.9f (want 0.858928323 0.512095809)", cs, sn);
    }
    {
        const model_config c = real_config("8b");
        const std::vector<float> t = build_rope_table(c);
        const int32_t hd = c.n_head_dim;
        const double f0 = table_theta(t, hd, 1, 0), th32 = table_theta(t, hd, 1000, 32);
        CHECK(std::fabs(f0 - 1.00220513) < 1e-7, "8B inv freq i=0: %.9f (want 1.00220513)", f0);
        CHECK(std::fabs(th32 - 0.598163426) < 1e-6, "8B p=1000 theta_32: %.9f (want 0.598163426)", th32);
        const double cs = t[1000 * size_t(hd) + 64], sn = t[1000 * size_t(hd) + 65];
        CHECK(std::fabs(cs - 0.826371253) < 2e-6 && std::fabs(sn - 0.56312573) < 2e-6,
              "8B p=1000 i=32: cos %.9f sin %.9f (want 0.826371253 0.56312573)", cs, sn);
        const double c0 = t[1000 * size_t(hd)], s0 = t[1000 * size_t(hd) + 1];
        CHECK(std::fabs(c0 + 0.99931252) < 2e-6 && std::fabs(s0 + 0.0370741673) < 2e-6,
              "8B p=1000 i=0: cos %.9f sin %.9f (want -0.99931252 -0.0370741673)", c0, s0);
    }
    {
        // max_position_embeddings > original: long factors (here twice the short ones) and mscale on cos and sin.
        model_config c = real_config("0.5b");
        c.n_ctx_train = 4096;
        c.n_ctx_orig = 1024;
        c.rope_long_factor = c.rope_short_factor;
        for (float & f : c.rope_long_factor) f *= 2.0f;
        const std::vector<float> t = build_rope_table(c);
        const int32_t hd = c.n_head_dim;
        const double amp = std::hypot(double(t[size_t(hd)]), double(t[size_t(hd) + 1]));
        const double want_amp = std::sqrt(1.0 + std::log(4.0) / std::log(1024.0));
        CHECK(std::fabs(amp - want_amp) < 1e-6, "long rope: amplitude %.9f (want mscale %.9f)", amp, want_amp);
        const double f0 = table_theta(t, hd, 1, 0);
        CHECK(std::fabs(f0 - 0.999564111 / 2) < 1e-7, "long rope: inv freq i=0 %.9f (want %.9f: long factors)", f0,
              0.999564111 / 2);
    }
}

// ---- the forward pass against the float64 forward ---------------------------------------------------------------

static void test_against_naive(const char * label, const minicpm_test::tiny_model_spec & spec, int32_t n_tokens) {
    std::unique_ptr<model> m = tiny_model(spec, "model");
    const std::vector<int32_t> toks = prompt(n_tokens, spec.n_vocab, 7);
    const std::vector<double>  ref = naive_forward(*m, toks);
    context ctx_ref(*m, ctx_params(true));
    context ctx_fast(*m, ctx_params(false));
    char what[128];
    std::snprintf(what, sizeof(what), "%s: reference ops vs float64 (%d tokens)", label, n_tokens);
    check_close(what, compare(eval_all(ctx_ref, spec.n_vocab, toks), ref), 1e-5);
    std::snprintf(what, sizeof(what), "%s: fast ops vs float64", label);
    check_close(what, compare(eval_all(ctx_fast, spec.n_vocab, toks), ref), TOL_FAST);
}

static minicpm_test::tiny_model_spec spec_05b() {  // tied, eps 1e-5, GQA group 8, divisor 4, no rope_theta key
    minicpm_test::tiny_model_spec s;
    s.n_embd = 128;
    s.n_head = 8;
    s.n_head_kv = 1;
    s.n_ff = 256;
    s.dim_model_base = 32;
    s.write_rope_theta = false;
    return s;
}

static minicpm_test::tiny_model_spec spec_8b() {  // untied, eps 1e-6, group 16, divisor 16, long rope with mscale
    minicpm_test::tiny_model_spec s;
    s.n_embd = 128;
    s.n_head = 16;
    s.n_head_kv = 1;
    s.n_ff = 256;
    s.rms_norm_eps = 1e-6f;
    s.dim_model_base = 8;
    s.tie_word_embeddings = false;
    s.n_ctx_train = 512;
    s.n_ctx_orig = 128;
    s.weight_type = dtype::f16;
    s.norm_type = dtype::f32;
    return s;
}

// Quantized at load (q8, q4 group 64): the fast ops run the integer kernels of the family (cpu/qmatmul.h, int8
// activations per 32 columns), the reference ops dequantize the same weights; both on the same model.
static void test_quantized() {
    const minicpm_test::tiny_model_spec spec = spec_05b();
    const std::string dir = minicpm_test::make_temp_dir("quant");
    minicpm_test::write_tiny_model(dir, spec);
    const std::vector<int32_t> toks = prompt(40, spec.n_vocab, 5);
    for (int32_t q : {int32_t(MINICPM_DTYPE_Q8), int32_t(MINICPM_DTYPE_Q4)}) {
        model_load_options o;
        o.backend = MINICPM_BACKEND_CPU;
        o.quantize = q;
        o.quant_group_size = 64;
        std::unique_ptr<model> m = model::load(dir, o);
        context ctx_ref(*m, ctx_params(true));
        context ctx_fast(*m, ctx_params(false));
        char what[128];
        std::snprintf(what, sizeof(what), "%s g64: fast ops (integer kernels) vs reference ops",
                      q == MINICPM_DTYPE_Q8 ? "q8" : "q4");
        // int8 activations: ~1e-5 NMSE per matmul (test-qmatmul); measured rel ~2e-3 over 2 layers and the head.
        check_close(what, compare(eval_all(ctx_fast, spec.n_vocab, toks), eval_all(ctx_ref, spec.n_vocab, toks)),
                    std::max(TOL_FAST, 1e-2));
        // Then decode (one row, then 5): the x86 families run these on the packed copy (cpu/qpack.h).
        for (const std::vector<int32_t> & next : {std::vector<int32_t>{7}, prompt(5, spec.n_vocab, 6)}) {
            std::snprintf(what, sizeof(what), "%s g64: decode %zu row(s) after the prompt, fast vs reference",
                          q == MINICPM_DTYPE_Q8 ? "q8" : "q4", next.size());
            check_close(what, compare(eval_all(ctx_fast, spec.n_vocab, next), eval_all(ctx_ref, spec.n_vocab, next)),
                        std::max(TOL_FAST, 1e-2));
        }
    }
    minicpm_test::remove_dir(dir);
}

// ---- context behaviour ------------------------------------------------------------------------------------------

static void test_chunked(const model & m) {
    const int32_t V = m.config().n_vocab;
    const std::vector<int32_t> toks = prompt(150, V, 11);
    context one(m, ctx_params(true));
    const std::vector<float> ref = eval_all(one, V, toks);
    for (int32_t chunk : {7, 64}) {
        context c(m, ctx_params(true, 1, chunk));
        char what[96];
        std::snprintf(what, sizeof(what), "chunked prefill n_chunk %d vs one-shot (ref ops)", chunk);
        check_close(what, compare(eval_all(c, V, toks), ref), 1e-6);
    }
    context fast_one(m, ctx_params(false));
    context fast_chunk(m, ctx_params(false, 1, 5));  // small pieces take the decode kernels, one-shot the prefill ones
    const std::vector<float> fast = eval_all(fast_one, V, toks);
    check_close("chunked prefill n_chunk 5 vs one-shot (fast ops)", compare(eval_all(fast_chunk, V, toks), fast),
                TOL_FAST);
    check_close("fast ops vs reference ops (150 tokens, one-shot)", compare(fast, ref), TOL_FAST);
}

static void test_batched(const model & m) {
    const int32_t V = m.config().n_vocab;
    const std::vector<int32_t> a = prompt(70, V, 21), b = prompt(30, V, 22);
    // Alone: each sequence in its own context, prompt then one more token.
    context ca(m, ctx_params(true)), cb(m, ctx_params(true));
    std::vector<float> ra = eval_all(ca, V, a), rb = eval_all(cb, V, b);
    const std::vector<float> ra2 = eval_all(ca, V, {5}), rb2 = eval_all(cb, V, {9});

    // Together: sequences 0 and 2 of one context, tokens interleaved in one batch, every row requested.
    context c(m, ctx_params(true, 3));
    std::vector<int32_t> toks, seqs;
    for (size_t i = 0; i < a.size() || i < b.size(); ++i) {
        if (i < a.size()) toks.push_back(a[i]), seqs.push_back(0);
        if (i < b.size()) toks.push_back(b[i]), seqs.push_back(2);
    }
    std::vector<uint8_t> out(toks.size(), 1);
    std::vector<float>   logits(toks.size() * size_t(V));
    const int32_t n = c.eval(toks.data(), seqs.data(), out.data(), int32_t(toks.size()), logits.data(),
                             int64_t(logits.size()));
    std::vector<float> ga, gb;
    for (size_t i = 0; i < toks.size(); ++i) {
        std::vector<float> & dst = seqs[i] == 0 ? ga : gb;
        dst.insert(dst.end(), logits.begin() + i * V, logits.begin() + (i + 1) * V);
    }
    CHECK(n == int32_t(toks.size()), "interleaved batch of 2 sequences: %d rows written", n);
    check_close("seq 0 (70 tokens) batched+interleaved vs alone", compare(ga, ra), 1e-6);
    check_close("seq 2 (30 tokens) batched+interleaved vs alone", compare(gb, rb), 1e-6);
    CHECK(c.seq_len(0) == 70 && c.seq_len(1) == 0 && c.seq_len(2) == 30, "seq lens after prefill: %d %d %d",
          c.seq_len(0), c.seq_len(1), c.seq_len(2));

    // One decode step of both, listed in the opposite order of their ids.
    const int32_t dt[2] = {9, 5}, ds[2] = {2, 0};
    std::vector<float> dl(2 * size_t(V));
    c.eval(dt, ds, nullptr, 2, dl.data(), int64_t(dl.size()));  // NULL output: only the last row (seq 0)
    check_close("decode step, NULL output = last row only (seq 0)",
                compare(std::vector<float>(dl.begin(), dl.begin() + V), ra2), 1e-6);
    c.seq_truncate(0, 70);
    c.seq_truncate(2, 30);
    const uint8_t both[2] = {1, 1};
    const int32_t n2 = c.eval(dt, ds, both, 2, dl.data(), int64_t(dl.size()));
    CHECK(n2 == 2, "decode step of 2 sequences: %d rows", n2);
    check_close("decode step row 0 (seq 2) vs alone", compare(std::vector<float>(dl.begin(), dl.begin() + V), rb2),
                1e-6);
    check_close("decode step row 1 (seq 0) vs alone", compare(std::vector<float>(dl.begin() + V, dl.end()), ra2), 1e-6);
}

static void test_kv_dtypes(const model & m) {
    const int32_t V = m.config().n_vocab;
    const std::vector<int32_t> toks = prompt(100, V, 31);
    context f32(m, ctx_params(true));
    const std::vector<float> ref = eval_all(f32, V, toks);
    context bf16(m, ctx_params(true, 1, 0, MINICPM_DTYPE_BF16));
    context f16(m, ctx_params(true, 1, 0, MINICPM_DTYPE_F16));
    const std::vector<float> ref_bf16 = eval_all(bf16, V, toks);
    check_close("KV bf16 vs f32 (ref ops, 100 tokens)", compare(ref_bf16, ref), 5e-3);
    check_close("KV f16 vs f32 (ref ops, 100 tokens)", compare(eval_all(f16, V, toks), ref), 1e-3);
    // A bf16 cache is where the families with attention_bf16 run BF16 dot-product attention.
    context fast_bf16(m, ctx_params(false, 1, 0, MINICPM_DTYPE_BF16));
    check_close("KV bf16: fast ops vs ref ops (100 tokens)", compare(eval_all(fast_bf16, V, toks), ref_bf16),
                TOL_FAST);
}

static void test_truncate(const model & m) {
    const int32_t V = m.config().n_vocab;
    const std::vector<int32_t> toks = prompt(80, V, 41);
    context c(m, ctx_params(true));
    const std::vector<float> all = eval_all(c, V, toks);
    c.seq_truncate(0, 40);
    CHECK(c.seq_len(0) == 40, "truncate 80 -> 40: seq len %d", c.seq_len(0));
    const std::vector<float> again = eval_all(c, V, std::vector<int32_t>(toks.begin() + 40, toks.end()));
    check_close("rows 40..79 after truncate + re-eval vs original",
                compare(again, std::vector<float>(all.begin() + 40 * size_t(V), all.end())), 1e-6);
}

// A token tree as one batch: siblings share a position, each node sees its ancestors. For each root-to-leaf
// path, the tree's logits at the path's nodes equal evaluating that path alone on a fork of the prompt. Then
// the accepted path is compacted into consecutive slots and decoding continues as if only it had been seen;
// and truncate-then-continue equals never having appended.
static void test_tree_batch(const model & m, bool reference) {
    const int32_t V = m.config().n_vocab;
    const char *  ops = reference ? "reference" : "fast";
    // Fast ops: a batch of 5+ rows may take the AMX path (activations rounded to bf16) while a shorter one
    // does not, so the tolerance is the fast path's.
    const double tol = reference ? 1e-6 : TOL_FAST;
    context       ctx(m, ctx_params(reference, 3, 0, MINICPM_DTYPE_F32));
    const std::vector<int32_t> p = prompt(61, V, 5);  // the tree crosses the first block boundary
    eval_all(ctx, V, p, 0);
    //        node: 0  1  2  3  4  5  6  7  8  9
    const int32_t parent[] = {-1, 0, 0, 1, 1, 2, 3, 3, 6, 5};
    const int32_t n = 10, n_past = 61;
    std::vector<int32_t>  toks = prompt(n, V, 9), pos(static_cast<size_t>(n));
    std::vector<uint64_t> mask(static_cast<size_t>(n), 0);
    std::vector<int32_t>  depth(static_cast<size_t>(n), 0);
    for (int32_t j = 0; j < n; ++j) {
        const int32_t q = parent[j];
        if (q >= 0) {
            mask[size_t(j)] = mask[size_t(q)] | (uint64_t(1) << q);
            depth[size_t(j)] = depth[size_t(q)] + 1;
        }
        pos[size_t(j)] = n_past + depth[size_t(j)];
    }
    ctx.seq_fork(0, 2, n_past);  // keep the prompt alone in seq 2 for the compaction check below
    std::vector<float> tree(size_t(n) * size_t(V));
    ctx.eval_tree(0, toks.data(), pos.data(), mask.data(), n, tree.data());

    diff    worst;
    int32_t n_paths = 0;
    for (int32_t leaf : {4, 7, 8, 9}) {
        std::vector<int32_t> path;
        for (int32_t j = leaf; j >= 0; j = parent[j]) path.insert(path.begin(), j);
        ctx.seq_fork(2, 1, n_past);
        std::vector<int32_t> ptoks;
        for (int32_t j : path) ptoks.push_back(toks[size_t(j)]);
        const std::vector<float> alone = eval_all(ctx, V, ptoks, 1);
        std::vector<float>       got;
        for (int32_t j : path) got.insert(got.end(), tree.begin() + size_t(j) * V, tree.begin() + size_t(j + 1) * V);
        const diff d = compare(got, alone);
        if (d.rel() > worst.rel() || n_paths == 0) worst = d;
        ++n_paths;
    }
    char what[96];
    std::snprintf(what, sizeof(what), "tree of 10 (4 paths, %s ops) vs each path alone", ops);
    check_close(what, worst, tol);

    // Accept the path 0-1-3-6-8 (slots 61, 62, 64, 67, 69): move it to slots 61..65, keep 66 tokens, and continue.
    const int32_t accepted[] = {0, 1, 3, 6, 8};
    std::vector<int32_t> src, dst, ptoks;
    for (int32_t i = 0; i < 5; ++i) {
        src.push_back(n_past + accepted[i]);
        dst.push_back(n_past + i);
        ptoks.push_back(toks[size_t(accepted[i])]);
    }
    ctx.seq_compact(0, src.data(), dst.data(), 5, n_past + 5);
    const std::vector<int32_t> more = prompt(3, V, 11);
    const std::vector<float>   after_tree = eval_all(ctx, V, more, 0);
    ctx.seq_fork(2, 1, n_past);
    std::vector<int32_t> plain = ptoks;
    plain.insert(plain.end(), more.begin(), more.end());
    const std::vector<float> all = eval_all(ctx, V, plain, 1);
    const std::vector<float> want(all.end() - 3 * size_t(V), all.end());
    std::snprintf(what, sizeof(what), "compacted path + 3 tokens (%s) vs plain", ops);
    check_close(what, compare(after_tree, want), tol);

    // Truncate then continue: append 20, drop them, append 3 == the prompt followed by the 3 directly.
    ctx.seq_fork(2, 1, n_past);
    eval_all(ctx, V, prompt(20, V, 13), 1);
    ctx.seq_truncate(1, n_past);
    const std::vector<float> cont = eval_all(ctx, V, more, 1);
    ctx.seq_fork(2, 1, n_past);
    const std::vector<float> direct = eval_all(ctx, V, more, 1);
    std::snprintf(what, sizeof(what), "truncate-then-continue (%s) vs never appended", ops);
    check_close(what, compare(cont, direct), 0.0);
}

static void test_errors(const model & m) {
    const int32_t V = m.config().n_vocab;
    const std::vector<int32_t> toks = prompt(50, V, 51);
    context c(m, ctx_params(true, 1, 0, MINICPM_DTYPE_F32, 100));
    eval_all(c, V, toks);
    std::vector<float> buf(4 * size_t(V));
    const int32_t good[3] = {1, 2, 3};
    const int32_t bad_tok[3] = {1, V, 3};
    const int32_t neg_tok[1] = {-1};
    const int32_t bad_seq[3] = {0, 1, 0};
    minicpm_test::expect_error("token id == n_vocab", MINICPM_STATUS_INVALID_ARGUMENT, {"token id", "index 1"},
                               [&] { c.eval(bad_tok, nullptr, nullptr, 3, buf.data(), int64_t(buf.size())); });
    minicpm_test::expect_error("token id -1", MINICPM_STATUS_INVALID_ARGUMENT, {"token id -1"},
                               [&] { c.eval(neg_tok, nullptr, nullptr, 1, buf.data(), int64_t(buf.size())); });
    minicpm_test::expect_error("seq id 1 with n_seq_max 1", MINICPM_STATUS_INVALID_ARGUMENT, {"seq id 1"},
                               [&] { c.eval(good, bad_seq, nullptr, 3, buf.data(), int64_t(buf.size())); });
    const std::vector<int32_t> many = prompt(51, V, 52);
    minicpm_test::expect_error("50 + 51 tokens > n_ctx 100", MINICPM_STATUS_TOO_LARGE, {"n_ctx 100"}, [&] {
        c.eval(many.data(), nullptr, nullptr, 51, buf.data(), int64_t(buf.size()));
    });
    minicpm_test::expect_error("logits capacity too small", MINICPM_STATUS_INVALID_ARGUMENT, {"capacity"},
                               [&] { c.eval(good, nullptr, nullptr, 3, buf.data(), int64_t(V) - 1); });
    minicpm_test::expect_error("n_tokens 0", MINICPM_STATUS_INVALID_ARGUMENT, {"n_tokens"},
                               [&] { c.eval(good, nullptr, nullptr, 0, buf.data(), int64_t(buf.size())); });
    CHECK(c.seq_len(0) == 50, "after 6 rejected evals the sequence still holds %d tokens (want 50)", c.seq_len(0));

    // The KV content is intact too: the next token gives the same logits as a clean context.
    std::vector<int32_t> ext = toks;
    ext.push_back(7);
    context clean(m, ctx_params(true));
    const std::vector<float> want = eval_all(clean, V, ext);
    check_close("next token after the errors vs clean context",
                compare(eval_all(c, V, {7}), std::vector<float>(want.end() - V, want.end())), 1e-6);

    const int32_t n_over = m.config().n_ctx_train + 1;
    minicpm_test::expect_error("n_ctx beyond the model", MINICPM_STATUS_INVALID_ARGUMENT, {"n_ctx"},
                               [&] { context x(m, ctx_params(true, 1, 0, MINICPM_DTYPE_F32, n_over)); });
    minicpm_test::expect_error("kv dtype 7", MINICPM_STATUS_INVALID_ARGUMENT, {"kv_dtype"},
                               [&] { context x(m, ctx_params(true, 1, 0, 7)); });
    minicpm_test::expect_error("n_seq_max 0", MINICPM_STATUS_INVALID_ARGUMENT, {"n_seq_max"},
                               [&] { context x(m, ctx_params(true, 0)); });
}

// ---- model::forward called directly (as the engine does), the debug hook, the KV pool ---------------------------

struct hook_log {
    std::vector<std::string> names;
    std::vector<int32_t>     layers;
    std::vector<float>       inp_scaled, result_output;
    int64_t                  out_rows = 0;
};

static void record(void * user, const char * name, int32_t il, const float * data, int64_t rows, int64_t cols) {
    hook_log & log = *(hook_log *) user;
    log.names.push_back(name);
    log.layers.push_back(il);
    if (std::string(name) == "inp_scaled") log.inp_scaled.assign(data, data + rows * cols);
    if (std::string(name) == "result_output") {
        log.result_output.assign(data, data + rows * cols);
        log.out_rows = rows;
    }
}

static void test_forward_direct(const model & m) {
    const model_config & c = m.config();
    const int32_t V = c.n_vocab, H = c.n_embd;
    backend_options ro;
    ro.reference = true;
    ro.n_threads = N_THREADS;
    std::unique_ptr<backend> be = m.make_backend(ro);
    kv_pool pool(*be, c, dtype::f32, 4);
    const uint64_t want_bpb = 2ull * c.n_layer * c.n_head_kv * MINICPM_KV_BLOCK_SIZE * c.n_head_dim * 4;
    const uint64_t bpb_f32 = kv_pool::bytes_per_block(c, dtype::f32);
    const uint64_t bpb_bf16 = kv_pool::bytes_per_block(c, dtype::bf16);
    CHECK(bpb_f32 == want_bpb && bpb_bf16 == want_bpb / 2, "bytes_per_block: f32 %llu (want %llu), bf16 %llu",
          (unsigned long long) bpb_f32, (unsigned long long) want_bpb, (unsigned long long) bpb_bf16);
    // Blocks need not be the lowest or in order: take the second and third of four.
    const int32_t b0 = pool.alloc(), b1 = pool.alloc(), b2 = pool.alloc();
    pool.release(b0);
    const int32_t blocks[2] = {b2, b1};
    CHECK(pool.n_free() == 2, "pool of 4 blocks with 2 held: %d free", pool.n_free());
    minicpm_test::expect_error("double release", MINICPM_STATUS_INTERNAL, {"not allocated"}, [&] { pool.release(b0); });
    model_config huge = c;  // 2^29 bytes per block x 2^20 blocks: more than any address space
    huge.n_layer = 64;
    huge.n_head_kv = 64;
    huge.n_head_dim = 128;
    minicpm_test::expect_error("KV pool of 2^49 bytes", MINICPM_STATUS_OUT_OF_MEMORY, {"cannot allocate", "bytes"},
                               [&] { kv_pool big(*be, huge, dtype::f32, 1 << 20); });

    const std::vector<int32_t> toks = prompt(70, V, 61);  // crosses the first block boundary
    kv_segment seg;
    seg.n_rows = 70;
    seg.blocks = blocks;
    const int32_t rows[2] = {4, 69};
    hook_log log;
    batch_view b;
    b.tokens = toks.data();
    b.n_tokens = 70;
    b.segs = &seg;
    b.n_segs = 1;
    b.logit_rows = rows;
    b.n_logit_rows = 2;
    b.hook = record;
    b.hook_user = &log;
    std::vector<float> logits(2 * size_t(V));
    forward_workspace  ws;
    m.forward(*be, ws, pool, b, logits.data());
    m.release_workspace(*be, ws);

    context ctx(m, ctx_params(true));
    const std::vector<float> all = eval_all(ctx, V, toks);
    std::vector<float> want(all.begin() + 4 * size_t(V), all.begin() + 5 * size_t(V));
    want.insert(want.end(), all.begin() + 69 * size_t(V), all.end());
    check_close("forward() on blocks {2, 1}, rows {4, 69} vs context", compare(logits, want), 1e-6);

    const size_t n_layer_calls = size_t(std::count(log.names.begin(), log.names.end(), std::string("l_out")));
    CHECK(!log.names.empty() && log.names.front() == "inp_scaled" && log.names.back() == "result_output" &&
              n_layer_calls == size_t(c.n_layer) && log.names.size() == 3 + 11 * size_t(c.n_layer),
          "hook: %zu calls, first \"%s\", last \"%s\", %zu l_out (layers %d)", log.names.size(),
          log.names.empty() ? "" : log.names.front().c_str(), log.names.empty() ? "" : log.names.back().c_str(),
          n_layer_calls, c.n_layer);
    CHECK(log.out_rows == 2 && compare(log.result_output, logits).max_abs == 0,
          "hook result_output: %lld rows, same as logits", (long long) log.out_rows);
    std::vector<double> emb(static_cast<size_t>(H));
    for (int32_t i = 0; i < H; ++i)
        emb[size_t(i)] = tensor_value(m.weights().embed, int64_t(toks[0]) * H + i) * c.scale_emb;
    check_close("hook inp_scaled row 0 = E[tok] * scale_emb",
                compare(std::vector<float>(log.inp_scaled.begin(), log.inp_scaled.begin() + H), emb), 1e-7);
}

// ---- the exported model and context functions on a real (tiny) checkpoint ---------------------------------------

static void test_c_api() {
    minicpm_test::tiny_model_spec spec = spec_8b();
    const std::string dir = minicpm_test::make_temp_dir("capi");
    minicpm_test::write_tiny_model(dir, spec);
    minicpm_model_t * m = nullptr;
    int32_t rc = minicpm_model_load(dir.c_str(), nullptr, &m);
    CHECK(rc == MINICPM_STATUS_OK && m != nullptr, "minicpm_model_load(tiny 8B-style): %s", minicpm_status_name(rc));
    if (!m) return;
    struct minicpm_model_info info;
    info.size = sizeof(info);
    rc = minicpm_model_info(m, &info);
    const int32_t hd = spec.head_dim();
    const uint64_t kv_tok = 2ull * spec.n_layer * spec.n_head_kv * hd * 2;  // K and V, bf16
    CHECK(rc == 0 && info.n_vocab == spec.n_vocab && info.n_layer == spec.n_layer && info.n_head_kv == 1 &&
              info.n_head_dim == hd && info.tied_head == 0 && info.weight_dtype == MINICPM_DTYPE_F16,
          "model_info: vocab %d layers %d kv heads %d head dim %d tied %u weight dtype %d", info.n_vocab, info.n_layer,
          info.n_head_kv, info.n_head_dim, info.tied_head, info.weight_dtype);
    CHECK(info.kv_bytes_per_token == kv_tok && info.n_eos == 2 && info.eos_token_ids[1] == 3 && info.bos_token_id == 1,
          "model_info: kv bytes/token %llu (want %llu), eos %d ids [%d %d], bos %d",
          (unsigned long long) info.kv_bytes_per_token, (unsigned long long) kv_tok, info.n_eos, info.eos_token_ids[0],
          info.eos_token_ids[1], info.bos_token_id);
    const double want_r = 1.4 / std::sqrt(double(spec.n_layer));
    const double want_ms = std::sqrt(1.0 + std::log(4.0) / std::log(128.0));  // max 512 / original 128
    CHECK(std::fabs(info.residual_scale - want_r) < 1e-6 && info.logit_divisor == 16.0f &&
              std::fabs(info.rope_mscale - want_ms) < 1e-6 && info.rms_norm_eps == 1e-6f,
          "model_info: residual %.8f (want %.8f) divisor %g mscale %.8f (want %.8f) eps %g", info.residual_scale,
          want_r, info.logit_divisor, info.rope_mscale, want_ms, info.rms_norm_eps);
    info.size = 8;
    rc = minicpm_model_info(m, &info);
    CHECK(rc == MINICPM_STATUS_ABI_MISMATCH, "model_info with size 8: %s", minicpm_status_name(rc));

    minicpm_context_t * c = nullptr;
    rc = minicpm_context_init(m, nullptr, &c);
    CHECK(rc == 0 && c, "context_init(NULL params = defaults): %s", minicpm_status_name(rc));
    std::vector<float> logits(size_t(spec.n_vocab));
    const int32_t toks[3] = {1, 2, spec.n_vocab};
    rc = minicpm_context_eval(c, toks, nullptr, nullptr, 3, logits.data(), int64_t(logits.size()));
    char msg[256];
    minicpm_last_error(msg, sizeof(msg));
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT && minicpm_context_seq_len(c, 0) == 0,
          "eval with a bad token: %s, seq len %d: %s", minicpm_status_name(rc), minicpm_context_seq_len(c, 0), msg);
    rc = minicpm_context_eval(c, toks, nullptr, nullptr, 2, logits.data(), int64_t(logits.size()));
    CHECK(rc == 1 && minicpm_context_seq_len(c, 0) == 2 && std::isfinite(logits[0]),
          "eval of 2 tokens: %d row, seq len %d, logit[0] %g", rc, minicpm_context_seq_len(c, 0), logits[0]);
    rc = minicpm_context_seq_len(c, 5);
    CHECK(rc == MINICPM_STATUS_INVALID_ARGUMENT, "seq_len(5) with n_seq_max 1: %s", minicpm_status_name(rc));
    rc = minicpm_context_seq_truncate(c, 0, 0);
    CHECK(rc == 0 && minicpm_context_seq_len(c, 0) == 0, "truncate to 0: seq len %d", minicpm_context_seq_len(c, 0));
    minicpm_context_free(c);
    minicpm_model_free(m);
    minicpm_test::remove_dir(dir);
}

int main() {
    std::printf("fast ops: kernel family %s (%s), tolerance %.0e\n", fast_family().name,
                cpu_kernels_exact(fast_family()) ? "exact f32" : "bf16 activations", TOL_FAST);
    try {
        test_rope_tables();
        std::printf("-- forward vs an independent float64 forward\n");
        test_against_naive("0.5B-style (tied, group 8, bf16)", spec_05b(), 40);
        test_against_naive("8B-style (untied, group 16, f16, long rope)", spec_8b(), 200);
        minicpm_test::tiny_model_spec s1;  // group 1, f32 weights, plain RoPE
        s1.n_head_kv = s1.n_head;
        s1.weight_type = dtype::f32;
        s1.norm_type = dtype::f32;
        s1.longrope = false;
        test_against_naive("group 1 (f32, plain rope)", s1, 30);
        test_quantized();

        std::printf("-- context\n");
        std::unique_ptr<model> m = tiny_model(spec_05b(), "ctx");
        test_chunked(*m);
        test_batched(*m);
        test_kv_dtypes(*m);
        test_truncate(*m);
        test_tree_batch(*m, true);
        test_tree_batch(*m, false);
        test_errors(*m);
        test_forward_direct(*m);
        test_c_api();
    } catch (const std::exception & e) {
        CHECK(false, "unexpected exception: %s", e.what());
    }
    return minicpm_test::finish();
}
