// EAGLE draft heads (model/eagle.h, engine/eagle-drafter.h) on a tiny random target and a random head in the
// published layout, reference ops:
//   - head parity: eagle_head::forward (causal rows, then masked tree rows over them) against a plain double
//     implementation written here from the checkpoint's values; FR-Spec logits equal the gathered columns,
//     also on a target quantized at load (fast ops);
//   - the head saved as pytorch_model.bin (torch.save layout) gives its safetensors twin's outputs bit for bit;
//     in CPM.cu's QAT -cpmcu layout (Marlin int4) it gives its dequantized F32 twin's outputs, and drafts losslessly;
//   - greedy and sampled requests in a batch of mixed sequences: output == plain decoding token for token, with
//     the full vocabulary and with an FR-Spec subset (every drafted token inside it), acceptance printed;
//   - bad head directories (wrong hidden size, missing tensor, wrong shape, a plain model) give clear errors,
//     also through minicpm_engine_init and minicpm_last_error; the C API path with draft_head + draft_vocab.
#include "engine/eagle-drafter.h"
#include "engine/scheduler.h"
#include "minicpm.h"
#include "model/eagle.h"
#include "tests/marlin-pack.h"
#include "tests/spec-requests.h"
#include "tests/tiny-model.h"

#include <chrono>
#include <cmath>
#include <thread>

using minicpm::scheduler;
using minicpm_test::greedy;
using minicpm_test::prompt_of;
using minicpm_test::run_all;
using req = minicpm_test::spec_request;
using minicpm_test::reference_ops;
using minicpm_test::str;

namespace {

minicpm_test::tiny_model_spec g_spec;
minicpm_test::tiny_eagle_spec g_head;
const minicpm::model *        g_model = nullptr;

// The checkpoint's values as doubles, by name (target and head), decoded from the same generator.
std::map<std::string, std::vector<double>> g_vals;

void collect_values(const std::vector<minicpm_test::raw_tensor> & ts) {
    for (const auto & t : ts) {
        std::vector<double> & v = g_vals[t.name];
        const size_t          n = t.bytes.size() / 2;
        v.resize(n);
        for (size_t i = 0; i < n; ++i)
            v[i] = minicpm::bf16_to_f32(uint16_t(uint8_t(t.bytes[2 * i]) | (uint16_t(uint8_t(t.bytes[2 * i + 1])) << 8)));
    }
}

// Plain double EAGLE head (the math of model/eagle.h written out): rows in order, each attending to the
// committed rows and to the rows visible[j] of the batch.
struct plain_head {
    int32_t H, nh, nkv, hd, F, V;
    double  eps, rscale, scale_emb;
    std::vector<float> rope;
    std::vector<std::vector<double>> K, Vv;  // cached keys / values per row seen so far
    const std::vector<double> & w(const std::string & n) { return g_vals.at(n); }
    std::vector<double> norm(const std::vector<double> & x, const std::string & g) {
        double ss = 0;
        for (double a : x) ss += a * a;
        const double r = 1.0 / std::sqrt(ss / double(H) + eps);
        std::vector<double> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w(g)[i];
        return y;
    }
    std::vector<double> lin(const std::vector<double> & x, const std::string & n, int64_t N) {
        const std::vector<double> & m = w(n);
        const size_t Kd = x.size();
        std::vector<double> y(size_t(N), 0.0);
        for (int64_t o = 0; o < N; ++o)
            for (size_t k = 0; k < Kd; ++k) y[size_t(o)] += m[size_t(o) * Kd + k] * x[k];
        return y;
    }
    void rot(std::vector<double> & x, int32_t p, int32_t heads) {
        for (int32_t h = 0; h < heads; ++h)
            for (int32_t i = 0; i < hd / 2; ++i) {
                const double c = rope[size_t(p) * hd + 2 * i], s = rope[size_t(p) * hd + 2 * i + 1];
                double & a = x[size_t(h * hd + i)];
                double & b = x[size_t(h * hd + i + hd / 2)];
                const double a0 = a, b0 = b;
                a = a0 * c - b0 * s;
                b = b0 * c + a0 * s;
            }
    }
    // One batch: rows j see the n_committed cached rows and the batch rows i with visible(j, i).
    template <typename Vis>
    void run(const std::vector<int32_t> & tok, const std::vector<std::vector<double>> & hid,
             const std::vector<int32_t> & pos, Vis visible, std::vector<std::vector<double>> & feat,
             std::vector<std::vector<double>> & logits) {
        const size_t n_committed = K.size();
        const size_t T = tok.size();
        std::vector<std::vector<double>> x(T), q(T);
        for (size_t t = 0; t < T; ++t) {
            std::vector<double> e(static_cast<size_t>(H));
            for (int32_t i = 0; i < H; ++i) e[size_t(i)] = w("model.embed_tokens.weight")[size_t(tok[t]) * H + i] * scale_emb;
            std::vector<double> cat = norm(e, "input_norm1.weight");
            const std::vector<double> h2 = norm(hid[t], "input_norm2.weight");
            cat.insert(cat.end(), h2.begin(), h2.end());
            x[t] = lin(cat, "fc.weight", H);
            for (int32_t i = 0; i < H; ++i) x[t][size_t(i)] += w("fc.bias")[size_t(i)];
            const std::vector<double> a = norm(x[t], "layers.0.input_layernorm.weight");
            q[t] = lin(a, "layers.0.self_attn.q_proj.weight", int64_t(nh) * hd);
            std::vector<double> k = lin(a, "layers.0.self_attn.k_proj.weight", int64_t(nkv) * hd);
            rot(q[t], pos[t], nh);
            rot(k, pos[t], nkv);
            K.push_back(k);
            Vv.push_back(lin(a, "layers.0.self_attn.v_proj.weight", int64_t(nkv) * hd));
        }
        feat.assign(T, {});
        logits.assign(T, {});
        for (size_t t = 0; t < T; ++t) {
            std::vector<size_t> seen;
            for (size_t c = 0; c < n_committed; ++c) seen.push_back(c);
            for (size_t i = 0; i <= t; ++i)
                if (i == t || visible(t, i)) seen.push_back(n_committed + i);
            std::vector<double> att(size_t(nh) * hd, 0.0);
            for (int32_t h = 0; h < nh; ++h) {
                const int32_t g = h / (nh / nkv);
                std::vector<double> s;
                double mx = -1e300;
                for (size_t c : seen) {
                    double d = 0;
                    for (int32_t i = 0; i < hd; ++i) d += q[t][size_t(h * hd + i)] * K[c][size_t(g * hd + i)];
                    s.push_back(d / std::sqrt(double(hd)));
                    mx = std::max(mx, s.back());
                }
                double z = 0;
                for (double & v : s) z += (v = std::exp(v - mx));
                for (size_t j = 0; j < seen.size(); ++j)
                    for (int32_t i = 0; i < hd; ++i) att[size_t(h * hd + i)] += s[j] / z * Vv[seen[j]][size_t(g * hd + i)];
            }
            std::vector<double> xx = x[t];
            const std::vector<double> o = lin(att, "layers.0.self_attn.o_proj.weight", H);
            for (int32_t i = 0; i < H; ++i) xx[size_t(i)] += rscale * o[size_t(i)];
            const std::vector<double> a = norm(xx, "layers.0.post_attention_layernorm.weight");
            std::vector<double> gt = lin(a, "layers.0.mlp.gate_proj.weight", F);
            const std::vector<double> up = lin(a, "layers.0.mlp.up_proj.weight", F);
            for (int32_t i = 0; i < F; ++i) gt[size_t(i)] = gt[size_t(i)] / (1.0 + std::exp(-gt[size_t(i)])) * up[size_t(i)];
            const std::vector<double> dn = lin(gt, "layers.0.mlp.down_proj.weight", H);
            for (int32_t i = 0; i < H; ++i) xx[size_t(i)] += rscale * dn[size_t(i)];
            feat[t] = xx;
            logits[t] = lin(xx, "lm_head.weight", V);
        }
    }
};

std::vector<double> as_double(const float * p, size_t n) { return std::vector<double>(p, p + n); }

double max_rel(const std::vector<std::vector<double>> & want, const std::vector<float> & got, size_t cols, double * scale) {
    double err = 0, mx = 0;
    for (size_t t = 0; t < want.size(); ++t)
        for (size_t i = 0; i < cols; ++i) {
            err = std::max(err, std::fabs(want[t][i] - double(got[t * cols + i])));
            mx = std::max(mx, std::fabs(want[t][i]));
        }
    *scale = mx;
    return mx > 0 ? err / mx : err;
}

void test_head_parity(const std::string & head_dir) {
    const minicpm::model_config & c = g_model->config();
    std::unique_ptr<minicpm::eagle_head> head = minicpm::eagle_head::load(head_dir, *g_model, true);
    auto be = g_model->make_backend(reference_ops());
    minicpm::kv_pool        kv(*be, head->config(), minicpm::dtype::f32, 4);
    minicpm::kv_seq         seq;
    minicpm::eagle_workspace ws;
    const int32_t H = c.n_embd, V = c.n_vocab, T = 6;

    plain_head ph{H, g_head.n_head, g_head.n_head_kv, g_head.head_dim(), g_head.n_ff, V, double(g_head.rms_norm_eps),
                  double(c.scale_depth) / std::sqrt(double(c.n_layer + 1)), double(c.scale_emb),
                  minicpm::build_rope_table(c), {}, {}};
    // Causal rows 0..5 with target-like features, then a 4-row tree over them: rows 1 and 2 are children of
    // row 0, row 3 a child of row 2 (masks as the drafter builds them).
    std::vector<int32_t> tok = {5, 77, 300, 12, 499, 64}, pos = {0, 1, 2, 3, 4, 5};
    std::vector<float>   hid(size_t(T) * H);
    for (size_t i = 0; i < hid.size(); ++i) hid[i] = float(std::sin(double(i) * 0.37) * 1.3);
    std::vector<float> feat(size_t(T) * H), logits(size_t(T) * V);
    std::vector<int32_t> rows = {0, 1, 2, 3, 4, 5};
    minicpm::kv_seq_prepare(kv, seq, 0, T);
    minicpm::kv_segment sg;
    sg.n_rows = T;
    sg.blocks = seq.blocks.data();
    head->forward(*be, ws, kv, sg, tok.data(), hid.data(), pos.data(), T, feat.data(), rows.data(), T, logits.data());
    seq.n_tokens = T;
    std::vector<std::vector<double>> hd_rows, pf, pl;
    for (int32_t t = 0; t < T; ++t) hd_rows.push_back(as_double(hid.data() + size_t(t) * H, size_t(H)));
    ph.run(tok, hd_rows, pos, [](size_t, size_t) { return true; }, pf, pl);
    double fs = 0, ls = 0;
    const double fe = max_rel(pf, feat, size_t(H), &fs), le = max_rel(pl, logits, size_t(V), &ls);

    // Tree rows: features are the outputs of earlier rows, as the drafter feeds them.
    const std::vector<int32_t> ttok = {9, 10, 11, 13}, tpos = {6, 7, 7, 8};
    const std::vector<uint64_t> mask = {0, 1, 1, 0b101};
    std::vector<float> thid(size_t(4) * H);
    for (int32_t t = 0; t < 4; ++t) std::copy_n(feat.data() + size_t(T - 1 - t) * H, H, thid.data() + size_t(t) * H);
    std::vector<float> tfeat(size_t(4) * H), tlog(size_t(4) * V);
    minicpm::kv_seq_prepare(kv, seq, T, T + 4);
    minicpm::kv_segment tg;
    tg.n_rows = 4;
    tg.n_past = T;
    tg.blocks = seq.blocks.data();
    tg.mask = mask.data();
    const std::vector<int32_t> trows = {0, 1, 2, 3};
    head->forward(*be, ws, kv, tg, ttok.data(), thid.data(), tpos.data(), 4, tfeat.data(), trows.data(), 4, tlog.data());
    std::vector<std::vector<double>> th, tf, tl;
    for (int32_t t = 0; t < 4; ++t) th.push_back(as_double(thid.data() + size_t(t) * H, size_t(H)));
    ph.run(ttok, th, tpos, [&](size_t j, size_t i) { return ((mask[j] >> i) & 1u) != 0; }, tf, tl);
    double tfs = 0, tls = 0;
    const double tfe = max_rel(tf, tfeat, size_t(H), &tfs), tle = max_rel(tl, tlog, size_t(V), &tls);
    CHECK(fe < 1e-4 && le < 1e-4 && tfe < 1e-4 && tle < 1e-4,
          "head parity vs plain double implementation: 6 causal rows: feature max rel err %.2e (|max| %.2f), logits "
          "%.2e (|max| %.2f); 4 masked tree rows: feature %.2e, logits %.2e (tolerance 1e-4)",
          fe, fs, le, ls, tfe, tle);

    // FR-Spec: the compact head's logits are the gathered columns of the full head's (same rows, same op).
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < 40; ++i) ids.push_back((i * 53 + 7) % V);
    head->restrict_vocab(ids, 32);
    std::vector<float> flog(size_t(T) * 32);
    minicpm::kv_seq_truncate(kv, seq, 0);
    minicpm::kv_seq_prepare(kv, seq, 0, T);
    sg.blocks = seq.blocks.data();
    head->forward(*be, ws, kv, sg, tok.data(), hid.data(), pos.data(), T, feat.data(), rows.data(), T, flog.data());
    double fr_err = 0;
    for (int32_t t = 0; t < T; ++t)
        for (int32_t j = 0; j < 32; ++j)
            fr_err = std::max(fr_err, std::fabs(double(flog[size_t(t) * 32 + j]) - double(logits[size_t(t) * V + ids[size_t(j)]])));
    CHECK(head->vocab_size() == 32 && head->token_of(5) == ids[5] && fr_err == 0.0,
          "FR-Spec head of 32 rows: vocab %d, logits == full-head columns (max abs diff %.3g), column 5 -> id %d",
          head->vocab_size(), fr_err, head->token_of(5));
    minicpm::kv_seq_free(kv, seq);
    head->release_workspace(*be, ws);
}

// FR-Spec on a target quantized at load, head included, on the fast ops (x86: the packed copy of each quantized
// matrix): the compact head holds the full head's rows, so its logits equal the full head's gathered columns.
void test_fr_spec_quantized(const std::string & target_dir, const std::string & head_dir) {
    for (const int32_t q : {int32_t(MINICPM_DTYPE_Q8), int32_t(MINICPM_DTYPE_Q4)}) {
        minicpm::model_load_options o;
        o.backend = MINICPM_BACKEND_CPU;
        o.quantize = q;
        o.quant_group_size = 32;
        const std::unique_ptr<minicpm::model>      m = minicpm::model::load(target_dir, o);
        const std::unique_ptr<minicpm::eagle_head> head = minicpm::eagle_head::load(head_dir, *m, true);
        const std::unique_ptr<minicpm::backend>    be = m->make_backend(minicpm::backend_options{});
        minicpm::kv_pool         kv(*be, head->config(), minicpm::dtype::f32, 4);
        minicpm::kv_seq          seq;
        minicpm::eagle_workspace ws;
        const int32_t H = m->config().n_embd, T = 6;
        const std::vector<int32_t> tok = {5, 77, 300, 12, 499, 64}, pos = {0, 1, 2, 3, 4, 5}, rows = {0, 1, 2, 3, 4, 5};
        std::vector<float>         hid(size_t(T) * H), feat(size_t(T) * H);
        for (size_t i = 0; i < hid.size(); ++i) hid[i] = float(std::cos(double(i) * 0.29) * 1.1);
        auto run = [&](int32_t V) {
            std::vector<float> logits(size_t(T) * V);
            minicpm::kv_seq_truncate(kv, seq, 0);
            minicpm::kv_seq_prepare(kv, seq, 0, T);
            minicpm::kv_segment sg;
            sg.n_rows = T;
            sg.blocks = seq.blocks.data();
            head->forward(*be, ws, kv, sg, tok.data(), hid.data(), pos.data(), T, feat.data(), rows.data(), T,
                          logits.data());
            return logits;
        };
        const int32_t            V = head->vocab_size();
        const std::vector<float> full = run(V);
        std::vector<int32_t>     ids;
        for (int32_t i = 0; i < 40; ++i) ids.push_back((i * 97 + 11) % V);
        head->restrict_vocab(ids, 40);
        const std::vector<float> compact = run(40);
        double err = 0, mx = 0;
        for (int32_t t = 0; t < T; ++t)
            for (int32_t j = 0; j < 40; ++j) {
                const double f = full[size_t(t) * V + ids[size_t(j)]];
                err = std::max(err, std::fabs(double(compact[size_t(t) * 40 + j]) - f));
                mx = std::max(mx, std::fabs(f));
            }
        CHECK(m->weights().head.quantized() && err == 0.0,
              "FR-Spec head of 40 rows on a %s target (head quantized: %s), fast ops (%s): logits == full-head "
              "columns: max abs diff %.3g (|max| %.3g)",
              q == MINICPM_DTYPE_Q8 ? "q8 g32" : "q4 g32", m->weights().head.quantized() ? "yes" : "no", be->name(),
              err, mx);
        minicpm::kv_seq_free(kv, seq);
        head->release_workspace(*be, ws);
    }
}

// The head's features and logits over 6 causal rows (the head parity inputs), on the reference ops.
std::vector<float> head_outputs(minicpm::eagle_head & head) {
    const int32_t H = g_model->config().n_embd, V = g_model->config().n_vocab, T = 6;
    auto be = g_model->make_backend(reference_ops());
    minicpm::kv_pool         kv(*be, head.config(), minicpm::dtype::f32, 4);
    minicpm::kv_seq          seq;
    minicpm::eagle_workspace ws;
    std::vector<int32_t> tok = {5, 77, 300, 12, 499, 64}, pos = {0, 1, 2, 3, 4, 5}, rows = {0, 1, 2, 3, 4, 5};
    std::vector<float>   hid(size_t(T) * H), out(size_t(T) * (H + V));
    for (size_t i = 0; i < hid.size(); ++i) hid[i] = float(std::cos(double(i) * 0.29) * 1.1);
    minicpm::kv_seq_prepare(kv, seq, 0, T);
    minicpm::kv_segment sg;
    sg.n_rows = T;
    sg.blocks = seq.blocks.data();
    head.forward(*be, ws, kv, sg, tok.data(), hid.data(), pos.data(), T, out.data(), rows.data(), T,
                 out.data() + size_t(T) * H);
    minicpm::kv_seq_free(kv, seq);
    head.release_workspace(*be, ws);
    return out;
}

// The same head saved as pytorch_model.bin (torch.save layout, tests/torch-bin.h) must load to the same weights:
// features and logits bit for bit those of its safetensors twin.
void test_bin_twin(const std::string & head_dir, const std::string & bin_dir) {
    const std::vector<float> a = head_outputs(*minicpm::eagle_head::load(head_dir, *g_model, true));
    const std::vector<float> b = head_outputs(*minicpm::eagle_head::load(bin_dir, *g_model, true));
    const std::vector<float> c = head_outputs(*minicpm::eagle_head::load(bin_dir, *g_model, false));
    double diff = a.size() == b.size() && a.size() == c.size() ? 0.0 : 1e9;
    for (size_t i = 0; i < a.size() && diff < 1e9; ++i)
        diff = std::max({diff, std::fabs(double(a[i]) - double(b[i])), std::fabs(double(a[i]) - double(c[i]))});
    CHECK(diff == 0.0 && std::memcmp(a.data(), b.data(), a.size() * 4) == 0,
          "EAGLE head from pytorch_model.bin (mmap and read) vs its model.safetensors twin: %zu features + logits, "
          "max abs diff %g (bit-identical wanted)", a.size(), diff);
}

// The head as CPM.cu's QAT -cpmcu layout (model_gptq.safetensors): fc1 / fc2 (the embedding and hidden halves
// of fc) each quantized to symmetric int4 and Marlin-repacked, concatenated on N; layers.0 fused as qkv_proj /
// gate_up_proj plus o_proj / down_proj, Marlin-repacked; norms and fc.bias as they are. Its twin holds the same
// int4 values dequantized, in F32 and the plain layout.
void write_marlin_head(const std::string & dir, const std::string & twin_dir, int64_t group) {
    const int64_t H = g_head.n_embd, F = g_head.n_ff, hd = g_head.head_dim();
    const int64_t q = int64_t(g_head.n_head) * hd, kv = int64_t(g_head.n_head_kv) * hd;
    std::vector<minicpm_test::raw_tensor> packed, twin;
    auto f32 = [](const std::vector<double> & v) {
        std::string b(v.size() * 4, '\0');
        for (size_t i = 0; i < v.size(); ++i) {
            const float f = float(v[i]);
            std::memcpy(&b[i * 4], &f, 4);
        }
        return b;
    };
    auto bytes_of = [](const auto & v) { return std::string((const char *) v.data(), v.size() * sizeof(v[0])); };
    // rows [n0, n0 + n) x columns [k0, k0 + k) of a named [rows, cols] weight
    auto block = [&](const std::string & name, int64_t cols, int64_t n0, int64_t n, int64_t k0, int64_t k) {
        std::vector<double> out;
        for (int64_t r = n0; r < n0 + n; ++r)
            for (int64_t c = k0; c < k0 + k; ++c) out.push_back(g_vals[name][size_t(r * cols + c)]);
        return out;
    };
    // One Marlin tensor from the parts stacked on N; each part's dequantized weight goes to the twin.
    auto marlin = [&](const std::string & prefix, const std::vector<std::string> & parts, const std::vector<int64_t> & Ns,
                      int64_t K) {
        std::vector<double> w;
        for (size_t i = 0; i < parts.size(); ++i) {
            const std::vector<double> b = block(parts[i] + ".weight", K, 0, Ns[i], 0, K);
            w.insert(w.end(), b.begin(), b.end());
        }
        const int64_t N = int64_t(w.size()) / K;
        const minicpm_test::marlin_q4 m = minicpm_test::quantize_sym_q4(w, N, K, K / group);
        std::vector<int32_t> qw;
        std::vector<uint16_t> sc;
        minicpm_test::marlin_pack(m, qw, sc);
        packed.push_back({prefix + ".qweight", "I32", {K / 16, 2 * N}, bytes_of(qw)});
        packed.push_back({prefix + ".scales", "F16", {K / group, N}, bytes_of(sc)});
        int64_t n0 = 0;
        for (size_t i = 0; i < parts.size(); ++i) {
            std::vector<double> d;
            for (int64_t n = n0; n < n0 + Ns[i]; ++n)
                for (int64_t k = 0; k < K; ++k) d.push_back(m.weight(n, k));
            twin.push_back({parts[i] + ".weight", "F32", {Ns[i], K}, f32(d)});
            n0 += Ns[i];
        }
    };
    // fc: halves packed separately, then qweight rows and scale rows concatenated on N
    std::vector<minicpm_test::marlin_q4> halves;
    std::vector<std::vector<int32_t>> qws(2);
    std::vector<std::vector<uint16_t>> scs(2);
    for (int h = 0; h < 2; ++h) {
        halves.push_back(minicpm_test::quantize_sym_q4(block("fc.weight", 2 * H, 0, H, h * H, H), H, H, H / group));
        minicpm_test::marlin_pack(halves.back(), qws[size_t(h)], scs[size_t(h)]);
    }
    std::vector<int32_t> fq;
    std::vector<uint16_t> fs;
    for (int64_t r = 0; r < H / 16; ++r)
        for (int h = 0; h < 2; ++h) fq.insert(fq.end(), qws[size_t(h)].begin() + r * 2 * H, qws[size_t(h)].begin() + (r + 1) * 2 * H);
    for (int64_t g = 0; g < H / group; ++g)
        for (int h = 0; h < 2; ++h) fs.insert(fs.end(), scs[size_t(h)].begin() + g * H, scs[size_t(h)].begin() + (g + 1) * H);
    packed.push_back({"fc.qweight", "I32", {H / 16, 4 * H}, bytes_of(fq)});
    packed.push_back({"fc.scales", "F16", {H / group, 2 * H}, bytes_of(fs)});
    std::vector<double> fc;
    for (int64_t n = 0; n < H; ++n)
        for (int64_t k = 0; k < 2 * H; ++k) fc.push_back(halves[size_t(k / H)].weight(n, k % H));
    twin.push_back({"fc.weight", "F32", {H, 2 * H}, f32(fc)});
    const std::string a = "layers.0.self_attn.", m = "layers.0.mlp.";
    marlin(a + "qkv_proj", {a + "q_proj", a + "k_proj", a + "v_proj"}, {q, kv, kv}, H);
    marlin(a + "o_proj", {a + "o_proj"}, {H}, q);
    marlin(m + "gate_up_proj", {m + "gate_proj", m + "up_proj"}, {F, F}, H);
    marlin(m + "down_proj", {m + "down_proj"}, {H}, F);
    for (const minicpm_test::raw_tensor & t : minicpm_test::tiny_eagle_raw_tensors(g_head))
        if (t.shape.size() == 1) packed.push_back(t), twin.push_back(t);  // norms and fc.bias
    std::filesystem::create_directories(dir);
    std::filesystem::create_directories(twin_dir);
    std::string cfg = minicpm_test::tiny_eagle_config_json(g_spec, g_head);
    minicpm_test::write_file(twin_dir + "/config.json", cfg);
    minicpm_test::write_file(twin_dir + "/model.safetensors", minicpm_test::safetensors_bytes(twin));
    cfg.insert(cfg.rfind('}'), ",  \"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": " +
                                   std::to_string(group) + ", \"sym\": true, \"desc_act\": false}\n");
    minicpm_test::write_file(dir + "/config.json", cfg);
    minicpm_test::write_file(dir + "/model_gptq.safetensors", minicpm_test::safetensors_bytes(packed));
}

// The QAT -cpmcu head loads; its outputs match its dequantized F32 twin (same weights, q4 vs f32 matmul).
void test_marlin_head(const std::string & root) {
    for (int64_t group : {32, 64}) {
        const std::string dir = root + "/marlin-" + std::to_string(group), twin = root + "/marlin-twin-" + std::to_string(group);
        write_marlin_head(dir, twin, group);
        auto head = minicpm::eagle_head::load(dir, *g_model, true);
        const std::vector<float> a = head_outputs(*head);
        const std::vector<float> b = head_outputs(*minicpm::eagle_head::load(twin, *g_model, true));
        double err = 0, mx = 0;
        for (size_t i = 0; i < a.size() && a.size() == b.size(); ++i)
            err = std::max(err, std::fabs(double(a[i]) - double(b[i]))), mx = std::max(mx, std::fabs(double(b[i])));
        CHECK(a.size() == b.size() && head->weights().fc.type == minicpm::dtype::q4 && err <= 1e-4 * mx,
              "QAT -cpmcu head (Marlin fc halves + fused layers.0, group %lld): fc %s [%lld, %lld]; features + logits "
              "vs dequantized F32 twin: max abs diff %.3g (|max| %.3g, tolerance 1e-4 relative)",
              (long long) group, minicpm::dtype_name(head->weights().fc.type), (long long) head->weights().fc.rows,
              (long long) head->weights().fc.cols, err, mx);
    }
}

minicpm_engine_params engine_params(int32_t kv_blocks = 96) {
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_chunk = 32;
    p.n_ctx = 320;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.kv_bytes = uint64_t(kv_blocks) * minicpm::kv_pool::bytes_per_block(g_model->config(), minicpm::dtype::f32);
    return p;
}

minicpm_sampling_params hot(int32_t n, uint64_t seed) {
    minicpm_sampling_params s = greedy(n);
    s.temperature = 0.8f;
    s.top_p = 0.9f;
    s.repetition_penalty = 1.2f;
    s.penalty_last_n = 16;
    s.seed = seed;
    return s;
}

double observed_error(const std::vector<req> & reqs, const std::vector<std::vector<int32_t>> & out,
                      const std::map<uint64_t, std::map<int32_t, std::vector<float>>> & observed) {
    const int32_t H = g_model->config().n_embd;
    auto be = g_model->make_backend(reference_ops());
    minicpm::kv_pool          kv(*be, g_model->config(), minicpm::dtype::f32, 8);
    minicpm::forward_workspace ws;
    double err = 0;
    size_t n_rows = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
        std::vector<int32_t> seq = reqs[i].prompt;
        seq.insert(seq.end(), out[i].begin(), out[i].end());
        const int32_t n = int32_t(seq.size());
        minicpm::kv_seq s;
        minicpm::kv_seq_prepare(kv, s, 0, n);
        minicpm::kv_segment sg;
        sg.n_rows = n;
        sg.blocks = s.blocks.data();
        std::vector<float>   hid(size_t(n) * size_t(H));
        minicpm::batch_view b;
        b.tokens = seq.data();
        b.n_tokens = n;
        b.segs = &sg;
        b.n_segs = 1;
        b.hidden = hid.data();
        g_model->forward(*be, ws, kv, b, nullptr);
        minicpm::kv_seq_free(kv, s);
        const auto it = observed.find(uint64_t(i + 1));
        if (it == observed.end()) return 1e30;
        for (const auto & [pos, row] : it->second) {
            if (pos >= n) return 1e30;
            for (int32_t k = 0; k < H; ++k) err = std::max(err, std::fabs(double(row[size_t(k)]) - double(hid[size_t(pos) * H + k])));
            ++n_rows;
        }
    }
    g_model->release_workspace(*be, ws);
    return n_rows > 0 ? err : 1e30;
}

// Wraps the EAGLE drafter to record every drafted token.
class recording final : public minicpm::drafter {
  public:
    explicit recording(std::shared_ptr<minicpm::eagle_drafter> d) : d_(std::move(d)) {}
    std::vector<int32_t> drafted;
    void draft(uint64_t id, const int32_t * t, int32_t n, int32_t mn, int32_t md, minicpm::draft_tree & out) override {
        d_->draft(id, t, n, mn, md, out);
        drafted.insert(drafted.end(), out.tokens.begin(), out.tokens.end());
    }
    void release(uint64_t id) override { d_->release(id); }
    bool wants_hidden() const override { return true; }
    void observe(uint64_t id, int32_t pos, const float * h, int32_t n) override {
        std::map<int32_t, std::vector<float>> & rows = observed[id];
        for (int32_t j = 0; j < n; ++j) rows[pos + j].assign(h + size_t(j) * size_t(H), h + size_t(j + 1) * size_t(H));
        d_->observe(id, pos, h, n);
    }
    int32_t H = 0;
    std::map<uint64_t, std::map<int32_t, std::vector<float>>> observed;  // request -> position -> last row sent

  private:
    std::shared_ptr<minicpm::eagle_drafter> d_;
};

// kv_blocks: the target's pool; 5 blocks make the requests preempt each other and come back through the prefix
// cache, and a repeated prompt start from the cached prefix, so the head sees rows sent again and rows skipped.
void test_batch(const std::string & head_dir, int32_t n_vocab_subset, const minicpm::tree_shape & shape,
                int32_t kv_blocks = 96) {
    std::vector<req> reqs = {{prompt_of(21, 1), greedy(128)}, {prompt_of(47, 2), greedy(67)},
                             {prompt_of(9, 3), hot(128, 7)},  {prompt_of(70, 4), greedy(128)},
                             {prompt_of(1, 5), greedy(40)},   {prompt_of(33, 6), hot(100, 99)}};
    if (kv_blocks < 96) reqs.push_back({prompt_of(70, 4), greedy(30)});  // waits, then starts from the cached prefix
    std::vector<std::vector<int32_t>> plain;
    {
        scheduler s(*g_model, engine_params(kv_blocks), reference_ops());
        plain = run_all(s, reqs, 180);
    }
    const int32_t V = g_model->config().n_vocab;
    std::vector<int32_t> ids;  // a ranked list: the plain output's ids first, then the rest
    std::vector<char>    in(size_t(V), 0);
    for (const auto & o : plain)
        for (int32_t t : o)
            if (!in[size_t(t)]) in[size_t(t)] = 1, ids.push_back(t);
    for (int32_t i = 0; i < V; ++i)
        if (!in[size_t(i)]) ids.push_back(i);
    std::fill(in.begin(), in.end(), 0);
    if (n_vocab_subset > 0)
        for (int32_t j = 0; j < n_vocab_subset; ++j) in[size_t(ids[size_t(j)])] = 1;

    scheduler s(*g_model, engine_params(kv_blocks), reference_ops());
    std::unique_ptr<minicpm::eagle_head> head = minicpm::eagle_head::load(head_dir, *g_model, true);
    if (n_vocab_subset > 0) head->restrict_vocab(ids, n_vocab_subset);
    auto ed = std::make_shared<minicpm::eagle_drafter>(std::move(head), s.backend_ref(), minicpm::dtype::f32, 64, shape);
    auto rd = std::make_shared<recording>(ed);
    rd->H = g_model->config().n_embd;
    s.set_drafter(rd, shape.tree_size - 1);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<std::vector<int32_t>> drafted = run_all(s, reqs, 180);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    struct minicpm_engine_stats st{};
    s.stats(st);
    int64_t outside = 0, total = 0;
    for (int32_t t : rd->drafted) outside += n_vocab_subset > 0 && !in[size_t(t)];
    for (const auto & o : plain) total += int64_t(o.size());
    // The rows handed to the drafter (prefill chunks, tree roots and kept paths) are the final-norm rows of one
    // plain forward over the whole sequence at the same positions.
    const double hid_err = kv_blocks < 96 ? 0.0 : observed_error(reqs, drafted, rd->observed);
    CHECK(hid_err == 0.0, "observed hidden rows == one plain forward over prompt + output at every position "
          "(max abs diff %.3g)", hid_err);
    CHECK(drafted == plain && outside == 0 && st.n_spec_verifies > 0 && st.kv_tokens_used == 0,
          "EAGLE head (tree %d/%d/%d, draft vocabulary %d, target KV %d blocks, %llu prefix-cache hit tokens): output "
          "== plain for %lld tokens in %zu requests (greedy incl. a 1-token prompt, sampled+penalties x2); %llu "
          "verifies, %zu drafted nodes (%lld outside the subset), mean accept length %.2f, %.0f ms; plain [%s]",
          shape.num_iter, shape.top_k, shape.tree_size, n_vocab_subset > 0 ? n_vocab_subset : V, kv_blocks,
          (unsigned long long) st.n_prefix_hit_tokens, (long long) total, reqs.size(),
          (unsigned long long) st.n_spec_verifies, rd->drafted.size(), (long long) outside,
          st.n_spec_verifies ? 1.0 + double(st.n_spec_accepted) / double(st.n_spec_verifies) : 0.0, ms,
          str(plain[0]).c_str());
}

void write_head(const std::string & dir, const minicpm_test::tiny_eagle_spec & e,
                const std::vector<minicpm_test::raw_tensor> & ts) {
    std::filesystem::create_directories(dir);
    minicpm_test::write_file(dir + "/config.json", minicpm_test::tiny_eagle_config_json(g_spec, e));
    minicpm_test::write_file(dir + "/model.safetensors", minicpm_test::safetensors_bytes(ts));
}

void test_bad_heads(const std::string & root, const std::string & target_dir) {
    using minicpm_test::expect_error;
    minicpm_test::tiny_eagle_spec wide = g_head;
    wide.n_embd = 32;
    write_head(root + "/wide", wide, minicpm_test::tiny_eagle_raw_tensors(wide));
    expect_error("head for another hidden size", MINICPM_STATUS_BAD_MODEL, {"hidden_size", "32", "64"},
                 [&] { minicpm::eagle_head::load(root + "/wide", *g_model, true); });
    std::vector<minicpm_test::raw_tensor> ts = minicpm_test::tiny_eagle_raw_tensors(g_head);
    std::vector<minicpm_test::raw_tensor> missing;
    for (const auto & t : ts)
        if (t.name != "layers.0.mlp.up_proj.weight") missing.push_back(t);
    write_head(root + "/missing", g_head, missing);
    expect_error("head without up_proj", MINICPM_STATUS_BAD_MODEL, {"missing tensor", "layers.0.mlp.up_proj.weight"},
                 [&] { minicpm::eagle_head::load(root + "/missing", *g_model, true); });
    std::vector<minicpm_test::raw_tensor> shaped = ts;
    shaped[0].shape = {64, 64};  // fc.weight with only the hidden half
    shaped[0].bytes.resize(64 * 64 * 2);
    write_head(root + "/shape", g_head, shaped);
    expect_error("fc.weight [H, H]", MINICPM_STATUS_BAD_MODEL, {"fc.weight", "[64, 64]", "[64, 128]"},
                 [&] { minicpm::eagle_head::load(root + "/shape", *g_model, true); });
    expect_error("a plain model as head", MINICPM_STATUS_BAD_MODEL, {"fc.weight", "not an EAGLE head"},
                 [&] { minicpm::eagle_head::load(target_dir, *g_model, true); });

    // Through the C API: a status and minicpm_last_error, no abort.
    minicpm_model_t * m = nullptr;
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    mp.backend = MINICPM_BACKEND_CPU;
    CHECK(minicpm_model_load(target_dir.c_str(), &mp, &m) == MINICPM_STATUS_OK, "C API: target loads");
    minicpm_engine_params ep = engine_params();
    const std::string missing_dir = root + "/missing";
    ep.draft_head = missing_dir.c_str();
    minicpm_engine_t * e = nullptr;
    const int32_t      st = minicpm_engine_init(m, &ep, &e);
    char               buf[512];
    minicpm_last_error(buf, sizeof(buf));
    const std::string  err = buf;
    CHECK(st == MINICPM_STATUS_BAD_MODEL && e == nullptr && err.find("up_proj") != std::string::npos,
          "C API: engine_init with a head missing a tensor -> status %d, last error: %s", st, err.c_str());
    minicpm_model_free(m);
}

// The C API path: draft_head + draft_vocab (a plain int32 file) through minicpm_engine_init; greedy output ==
// the engine without a drafter.
void test_api(const std::string & root, const std::string & target_dir, const std::string & head_dir) {
    minicpm_model_t *    m = nullptr;
    minicpm_model_params mp;
    minicpm_model_default_params(&mp);
    mp.backend = MINICPM_BACKEND_CPU;
    if (minicpm_model_load(target_dir.c_str(), &mp, &m) != MINICPM_STATUS_OK) {
        CHECK(false, "C API: target loads");
        return;
    }
    std::string vocab;
    for (int32_t i = 0; i < 128; ++i) {
        const int32_t id = (i * 5 + 3) % 512;
        vocab.append((const char *) &id, 4);
    }
    const std::string vocab_path = root + "/freq.bin";
    minicpm_test::write_file(vocab_path, vocab);
    std::vector<int32_t> got[2];
    uint64_t             verifies = 0;
    for (int arm = 0; arm < 2; ++arm) {
        minicpm_engine_params ep = engine_params();
        if (arm == 1) ep.draft_head = head_dir.c_str(), ep.draft_vocab = vocab_path.c_str(), ep.draft_vocab_size = 100;
        minicpm_engine_t * e = nullptr;
        if (minicpm_engine_init(m, &ep, &e) != MINICPM_STATUS_OK) {
            char buf[512];
            minicpm_last_error(buf, sizeof(buf));
            CHECK(false, "C API: engine_init (arm %d): %s", arm, buf);
            break;
        }
        const std::vector<int32_t> p = prompt_of(30, 9);
        const minicpm_sampling_params sp = greedy(64);
        uint64_t id = 0;
        minicpm_engine_submit(e, p.data(), int32_t(p.size()), &sp, nullptr, 0, nullptr, nullptr, 0, &id);
        bool done = false;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (!done && std::chrono::steady_clock::now() < deadline) {
            minicpm_event ev[16];
            const int32_t n = minicpm_engine_drain(e, id, ev, 16);
            for (int32_t i = 0; i < n; ++i) {
                if (ev[i].token >= 0) got[arm].push_back(ev[i].token);
                done = done || ev[i].finish_reason != MINICPM_FINISH_NONE;
            }
            if (n == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        struct minicpm_engine_stats st;
        st.size = sizeof(st);
        minicpm_engine_stats(e, &st);
        if (arm == 1) verifies = st.n_spec_verifies;
        minicpm_engine_free(e);
    }
    CHECK(got[0] == got[1] && got[0].size() == 64 && verifies > 0,
          "C API: draft_head + draft_vocab (100 of a 128-id int32 file): greedy output == no drafter (%zu tokens), "
          "%llu verifies", got[1].size(), (unsigned long long) verifies);
    minicpm_model_free(m);
}

// An InfLLM v2 target (dense_len 300): a greedy request crossing dense_len with the EAGLE head gives the plain
// tokens, with trees verified past dense_len too (test-spec-sparse covers that in depth).
void test_sparse_target(const std::string & root) {
    minicpm_test::tiny_model_spec spec;
    spec.n_embd = 256;
    spec.n_head = 16;
    spec.n_head_kv = 2;
    spec.n_ff = 256;
    spec.weight_std = 0.25f;
    const std::string dir = root + "/sparse", head_dir = root + "/sparse-head";
    std::filesystem::create_directories(dir);
    std::filesystem::create_directories(head_dir);
    minicpm_test::write_tiny_model(dir, spec);
    minicpm_test::add_sparse_config(dir, 128, 3, 300);
    minicpm_test::tiny_eagle_spec e;
    e.n_embd = 256, e.n_head = 16, e.n_head_kv = 2, e.n_ff = 256;
    minicpm_test::write_tiny_eagle(head_dir, spec, e);
    std::unique_ptr<minicpm::model> m = minicpm::model::load(dir, true, MINICPM_BACKEND_CPU);
    minicpm_engine_params p;
    minicpm_engine_default_params(&p);
    p.n_threads = 2;
    p.n_ctx = 512;
    p.kv_dtype = MINICPM_DTYPE_F32;
    p.kv_bytes = uint64_t(32) * minicpm::kv_pool::bytes_per_block(m->config(), minicpm::dtype::f32);
    const std::vector<req> reqs = {{prompt_of(260, 8), greedy(80)}};
    std::vector<std::vector<int32_t>> out[2];
    uint64_t verifies = 0;
    for (int arm = 0; arm < 2; ++arm) {
        scheduler s(*m, p, reference_ops());
        if (arm == 1) {
            minicpm::tree_shape shape;
            s.set_drafter(std::make_shared<minicpm::eagle_drafter>(minicpm::eagle_head::load(head_dir, *m, true),
                                                                   s.backend_ref(), minicpm::dtype::f32, 32, shape),
                          shape.tree_size - 1);
        }
        out[arm] = run_all(s, reqs, 180);
        struct minicpm_engine_stats st{};
        s.stats(st);
        verifies = st.n_spec_verifies;
    }
    CHECK(m->config().sparse.enabled && out[0] == out[1] && out[1][0].size() == 80 && verifies > 0 && verifies < 80,
          "InfLLM v2 target (dense_len 300), 260-token prompt + 80 greedy tokens with the EAGLE head: output == plain "
          "(%zu tokens), %llu verifies",
          out[1][0].size(), (unsigned long long) verifies);
}

}  // namespace

int main() {
    const std::string dir = minicpm_test::make_temp_dir("eagle");
    std::filesystem::create_directories(dir + "/target");
    std::filesystem::create_directories(dir + "/head");
    g_spec.tie_word_embeddings = false;
    g_spec.weight_std = 0.25f;
    minicpm_test::write_tiny_model(dir + "/target", g_spec);
    minicpm_test::write_tiny_eagle(dir + "/head", g_spec, g_head);
    std::filesystem::create_directories(dir + "/head-bin");
    minicpm_test::write_tiny_eagle(dir + "/head-bin", g_spec, g_head, true);
    collect_values(minicpm_test::tiny_raw_tensors(g_spec));
    collect_values(minicpm_test::tiny_eagle_raw_tensors(g_head));
    try {
        std::unique_ptr<minicpm::model> target = minicpm::model::load(dir + "/target", true, MINICPM_BACKEND_CPU);
        g_model = target.get();
        test_head_parity(dir + "/head");
        test_fr_spec_quantized(dir + "/target", dir + "/head");
        test_bin_twin(dir + "/head", dir + "/head-bin");
        test_marlin_head(dir);
        test_batch(dir + "/marlin-32", 0, minicpm::tree_shape{});
        minicpm::tree_shape shape;  // CPM.cu CLI defaults 2 / 10 / 12
        test_batch(dir + "/head", 0, shape);
        test_batch(dir + "/head", 64, shape);
        test_batch(dir + "/head", 0, minicpm::tree_shape{4, 4, 16});
        test_batch(dir + "/head", 0, shape, 5);
        test_bad_heads(dir, dir + "/target");
        test_api(dir, dir + "/target", dir + "/head");
        test_sparse_target(dir);
    } catch (const std::exception & e) {
        CHECK(false, "unexpected exception: %s", e.what());
    }
    minicpm_test::remove_dir(dir);
    return minicpm_test::finish();
}
