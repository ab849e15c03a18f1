// Model loading: the JSON parser, f16 conversions, config.json parsing (incl. the real MiniCPM4 configs) and
// load_model_files on tiny checkpoints, good and broken. Every rejection must carry the right status and a
// message naming the file, tensor or field; the messages are printed.
#include "core/json.h"
#include "model/weights.h"
#include "tests/tiny-model.h"

#include <algorithm>
#include <cmath>

using namespace minicpm;
using namespace minicpm_test;

namespace {

// ------------------------------------------------------------------------------------------------------------
// JSON

json_value parse(const std::string & s) { return json_parse(s.data(), s.size(), "test.json"); }

void test_json() {
    const json_value v = parse(R"( {"a": [1, -2.5e3, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00",
                                   "big": 9007199254740993, "neg": -9223372036854775808, "f": 2.0} )");
    const json_value * a = v.find("a");
    CHECK(a && a->is_array() && a->items.size() == 5, "array of 5 parsed");
    CHECK(a && a->items[1].number == -2500.0 && a->items[1].is_int && a->items[1].integer == -2500,
          "-2.5e3 -> %g (int %lld)", a ? a->items[1].number : 0.0, a ? (long long) a->items[1].integer : 0LL);
    CHECK(a && a->items[2].is_bool() && a->items[2].boolean && a->items[3].is_bool() && !a->items[3].boolean &&
              a->items[4].is_null(), "true / false / null");
    const json_value * s = v.find("s");
    const std::string want = std::string("q\"\\/\b\f\n\r\t") + "\xc3\xa9" + "\xf0\x9f\x98\x80";
    CHECK(s && s->string == want, "escapes incl. \\u00e9 and a surrogate pair decode to %zu bytes (want %zu)",
          s ? s->string.size() : 0, want.size());
    const json_value * big = v.find("big");
    CHECK(big && big->is_int && big->integer == 9007199254740993LL, "2^53 + 1 kept exact: %lld",
          big ? (long long) big->integer : 0LL);
    const json_value * neg = v.find("neg");
    CHECK(neg && neg->is_int && neg->integer == INT64_MIN, "int64 min exact: %lld", neg ? (long long) neg->integer : 0LL);
    const json_value * f = v.find("f");
    CHECK(f && f->is_int && f->integer == 2, "2.0 counts as the integer 2");
    const json_value u = parse("18446744073709551615");
    CHECK(!u.is_int && u.number == 18446744073709551615.0, "2^64 - 1 is a double, not an int64 (%g)", u.number);

    struct bad_case {
        const char * text;
        const char * needle;
    };
    const bad_case bad[] = {
        {"", "byte 0"},                  {"{\"a\":1,}", "byte 7"},      {"[1 2]", "byte 3"},
        {"01", "leading zero"},          {"1.", "after '.'"},           {"-", "expected a digit"},
        {"+1", "unexpected character"},  {"\"\\x\"", "invalid escape"}, {"\"\\ud800\"", "surrogate"},
        {"\"\\udc00\"", "surrogate"},    {"\"a\nb\"", "control"},       {"\"\xc0\xaf\"", "UTF-8"},
        {"\"\xed\xa0\x80\"", "UTF-8"},   {"\"abc", "unterminated"},     {"1e999", "out of range"},
        {"{\"k\":1,\"k\":2}", "duplicate key 'k'"}, {"[1] x", "after the JSON value"}, {"tru", "literal"},
        {"NaN", "unexpected character"}, {"{\"a\" 1}", "expected ':'"},
    };
    for (const bad_case & b : bad) {
        expect_error((std::string("json ") + b.text).c_str(), MINICPM_STATUS_BAD_MODEL, {"test.json", b.needle},
                     [&] { parse(b.text); });
    }
    const std::string deep = std::string(65, '[') + std::string(65, ']');
    expect_error("json nesting 65 deep", MINICPM_STATUS_BAD_MODEL, {"nesting deeper than 64"}, [&] { parse(deep); });
    const std::string ok64 = std::string(64, '[') + std::string(64, ']');
    CHECK(parse(ok64).is_array(), "nesting 64 deep is accepted");
    json_limits small;
    small.max_values = 3;
    expect_error("json value limit", MINICPM_STATUS_BAD_MODEL, {"more than 3 values"},
                 [&] { json_parse("[1,2,3]", 7, "test.json", small); });
}

// ------------------------------------------------------------------------------------------------------------
// f16

// Independent oracle: the value of a half from its fields.
double half_value(uint16_t h) {
    const int    e = (h >> 10) & 0x1f;
    const int    m = h & 0x3ff;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 0) return sign * std::ldexp(double(m), -24);
    if (e == 31) return m ? NAN : sign * INFINITY;
    return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

void test_f16() {
    int bad_decode = 0, bad_roundtrip = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float  f = f16_to_f32(uint16_t(h));
        const double want = half_value(uint16_t(h));
        if (std::isnan(want) ? !std::isnan(f) : double(f) != want || std::signbit(f) != bool(h & 0x8000)) bad_decode++;
        const uint16_t back = f32_to_f16(f);
        if (std::isnan(want) ? ((back & 0x7c00) != 0x7c00 || (back & 0x3ff) == 0) : back != h) bad_roundtrip++;
    }
    CHECK(bad_decode == 0, "f16_to_f32 matches the field formula on all 65536 halves (%d mismatches)", bad_decode);
    CHECK(bad_roundtrip == 0, "f16 -> f32 -> f16 is the identity (NaN stays NaN): %d mismatches", bad_roundtrip);

    // Round to nearest even against a search over all positive finite halves (sorted by value).
    std::vector<double> halves;
    for (uint32_t h = 0; h < 0x7c00; h++) halves.push_back(half_value(uint16_t(h)));
    auto oracle = [&](float x) -> uint16_t {
        const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
        const double   a = std::fabs(double(x));
        if (std::isnan(x)) return 0x7e00;
        if (a >= 65520.0) return sign | 0x7c00;
        const size_t hi = size_t(std::lower_bound(halves.begin(), halves.end(), a) - halves.begin());
        if (hi == halves.size()) return uint16_t(sign | (hi - 1));  // (65504, 65520) rounds down to the max
        if (hi == 0 || halves[hi] == a) return uint16_t(sign | hi);
        const double dlo = a - halves[hi - 1], dhi = halves[hi] - a;
        if (dlo < dhi) return uint16_t(sign | (hi - 1));
        if (dhi < dlo) return uint16_t(sign | hi);
        return uint16_t(sign | ((hi - 1) % 2 == 0 ? hi - 1 : hi));
    };
    uint64_t state = 7;
    int      mismatches = 0, n = 0;
    uint32_t first_bad = 0;
    auto try_bits = [&](uint32_t bits) {
        float x;
        std::memcpy(&x, &bits, 4);
        const uint16_t got = f32_to_f16(x), want = oracle(x);
        const bool     ok = std::isnan(x) ? (got & 0x7c00) == 0x7c00 && (got & 0x3ff) != 0 : got == want;
        if (!ok && mismatches++ == 0) first_bad = bits;
        n++;
    };
    const uint32_t edges[] = {0x00000000u, 0x80000000u, 0x33000000u, 0x33000001u, 0x337fffffu, 0x33800000u,
                              0x38800000u, 0x387fe000u, 0x387ff000u, 0x477fe000u, 0x477fefffu, 0x477ff000u,
                              0x7f800000u, 0xff800000u, 0x7fc00000u, 0x00000001u, 0x3f801000u, 0x3f803000u};
    for (uint32_t e : edges) try_bits(e);
    for (int i = 0; i < 300000; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const uint32_t r = uint32_t(state >> 32);
        // half the samples land in the f16 range (exponents 100..145) where rounding matters
        try_bits(i % 2 ? r : (r & 0x807fffffu) | (uint32_t(100 + (r >> 8) % 46) << 23));
    }
    CHECK(mismatches == 0, "f32_to_f16 rounds to nearest even on %d inputs: %d mismatches (first 0x%08x)", n, mismatches,
          first_bad);
    CHECK(std::string(dtype_name(dtype::bf16)) == "bf16" && std::string(dtype_name(dtype::f16)) == "f16" &&
              std::string(dtype_name(dtype::f32)) == "f32", "dtype names");
}

// ------------------------------------------------------------------------------------------------------------
// config.json

std::string fixture(const char * in_repo, const char * shared) {
    const std::string a = std::string(MINICPM_SOURCE_DIR) + in_repo;
    if (std::filesystem::exists(a)) return a;
    return std::string(MINICPM_SOURCE_DIR) + shared;
}

bool near(double a, double b, double tol) { return std::fabs(a - b) <= tol; }

void test_real_configs() {
    const std::string p05 = fixture("/assets/minicpm4/config-0.5b/config.json",
                                    "/../shared/fixtures/minicpm4-config/0.5b/config.json");
    const model_config s = parse_config(read_file(p05), p05);
    CHECK(s.tie_word_embeddings, "0.5B: tied (tie_word_embeddings absent) [%s]", p05.c_str());
    CHECK(s.rms_norm_eps == 1e-5f, "0.5B: rms_norm_eps %g", s.rms_norm_eps);
    CHECK(s.rope_theta == 10000.0f, "0.5B: rope_theta %g (absent -> default)", s.rope_theta);
    CHECK(s.n_head_dim == 64 && s.n_head == 16 && s.n_head_kv == 2 && s.n_layer == 24 && s.n_embd == 1024 &&
              s.n_ff == 4096 && s.n_vocab == 73448 && s.n_ctx_train == 32768,
          "0.5B: head_dim %d, heads %d/%d, layers %d, hidden %d, ff %d, vocab %d, ctx %d", s.n_head_dim, s.n_head,
          s.n_head_kv, s.n_layer, s.n_embd, s.n_ff, s.n_vocab, s.n_ctx_train);
    CHECK(near(s.residual_scale(), 0.28577380, 1e-7), "0.5B: residual_scale %.8f (want 0.28577380)", s.residual_scale());
    CHECK(s.logit_divisor() == 4.0f, "0.5B: logit divisor %g", s.logit_divisor());
    CHECK(s.scale_emb == 12.0f, "0.5B: scale_emb %g", s.scale_emb);
    CHECK(s.rope_mscale() == 1.0f, "0.5B: rope_mscale %g", s.rope_mscale());
    CHECK(s.rope_long_factor.size() == 32 && s.rope_short_factor.size() == 32 && s.n_ctx_orig == 32768 &&
              s.rope_long_factor[0] == 1.0004360675811768f && s.rope_long_factor[31] == 49.85338592529297f,
          "0.5B: %zu long factors, first %.9g last %.9g, orig %d", s.rope_long_factor.size(),
          s.rope_long_factor.empty() ? 0.0 : s.rope_long_factor[0],
          s.rope_long_factor.empty() ? 0.0 : s.rope_long_factor.back(), s.n_ctx_orig);
    CHECK(s.bos_token_id == 1 && s.eos_token_ids == std::vector<int32_t>({2, 73440}), "0.5B: bos %d, eos [%d, %d]",
          s.bos_token_id, s.eos_token_ids.size() > 0 ? s.eos_token_ids[0] : -1,
          s.eos_token_ids.size() > 1 ? s.eos_token_ids[1] : -1);

    const std::string p8 = fixture("/assets/minicpm4/config-8b/config.json",
                                   "/../shared/fixtures/minicpm4-config/8b/config.json");
    const model_config b = parse_config(read_file(p8), p8);
    CHECK(!b.tie_word_embeddings, "8B: untied [%s]", p8.c_str());
    CHECK(b.rms_norm_eps == 1e-6f, "8B: rms_norm_eps %g", b.rms_norm_eps);
    CHECK(b.n_head / b.n_head_kv == 16 && b.n_head_dim == 128, "8B: GQA group %d, head_dim %d",
          b.n_head / b.n_head_kv, b.n_head_dim);
    CHECK(b.logit_divisor() == 16.0f, "8B: logit divisor %g", b.logit_divisor());
    CHECK(near(b.residual_scale(), 0.24748737, 1e-7), "8B: residual_scale %.8f (want 0.24748737)", b.residual_scale());
    CHECK(b.rope_long_factor.size() == 64 && near(b.rope_long_factor[21], 4.615569542115128, 1e-6),
          "8B: %zu factors, element 21 = %.7f (config set, not the 128K recipe)", b.rope_long_factor.size(),
          b.rope_long_factor.size() > 21 ? b.rope_long_factor[21] : 0.0);

    std::string longer = read_file(p05);
    const std::string key = "\"max_position_embeddings\": 32768";
    longer.replace(longer.find(key), key.size(), "\"max_position_embeddings\": 131072");
    const model_config l = parse_config(longer, "131072.json");
    CHECK(near(l.rope_mscale(), 1.0645812948, 1e-7), "max 131072 / orig 32768: rope_mscale %.10f (want 1.0645812948)",
          l.rope_mscale());
}

// Parses tiny_config_json(spec) with `from` replaced by `to`; expects status and a message naming `field`.
void config_case(const char * label, const std::string & from, const std::string & to, int32_t status,
                 const char * field) {
    std::string text = tiny_config_json(tiny_model_spec());
    const size_t at = text.find(from);
    if (!CHECK(at != std::string::npos, "%s: template has '%s'", label, from.c_str())) return;
    text.replace(at, from.size(), to);
    expect_error(label, status, {"config.json", field}, [&] { parse_config(text, "tiny/config.json"); });
}

void test_bad_configs() {
    const int32_t bad = MINICPM_STATUS_BAD_MODEL, unsup = MINICPM_STATUS_UNSUPPORTED;
    config_case("negative hidden_size", "\"hidden_size\": 64", "\"hidden_size\": -64", bad, "'hidden_size'");
    config_case("fractional layers", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2.5", bad,
                "'num_hidden_layers'");
    config_case("missing vocab_size", "\"vocab_size\": 512,", "", bad, "'vocab_size' is missing");
    config_case("heads % kv heads", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", bad,
                "'num_key_value_heads'");
    config_case("hidden % heads", "\"num_attention_heads\": 4", "\"num_attention_heads\": 6", bad, "'hidden_size'");
    config_case("rope factor count", "\"long_factor\": [1, ", "\"long_factor\": [", bad, "'rope_scaling.long_factor'");
    config_case("negative rope factor", "\"short_factor\": [1, ", "\"short_factor\": [-1, ", bad,
                "'rope_scaling.short_factor[0]'");
    config_case("eps zero", "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", bad, "'rms_norm_eps'");
    config_case("yarn rope", "\"longrope\"", "\"yarn\"", unsup, "'rope_scaling.rope_type'");
    config_case("gelu", "\"silu\"", "\"gelu\"", unsup, "'hidden_act'");
    config_case("other model_type", "\"model_type\": \"minicpm\"", "\"model_type\": \"llama\"", unsup, "'model_type'");
    config_case("other architecture", "MiniCPMForCausalLM", "LlamaForCausalLM", unsup, "'architectures'");
    // One more than minicpm_model_info can carry: refused, never truncated.
    config_case("too many eos ids", "\"eos_token_id\": [2, 3]", "\"eos_token_id\": [1,2,3,4,5,6,7,8,9]", unsup,
                "'eos_token_id' lists 9 ids, at most 8 (MINICPM_MAX_EOS_IDS)");
    config_case("eos id out of range", "\"eos_token_id\": [2, 3]", "\"eos_token_id\": [2, 512]", bad,
                "'eos_token_id[1]'");
    config_case("tie not a bool", "\"vocab_size\"", "\"tie_word_embeddings\": \"yes\", \"vocab_size\"", bad,
                "'tie_word_embeddings'");
    config_case("invalid JSON", "\"hidden_size\": 64", "\"hidden_size\" 64", bad, "invalid JSON at byte");
    config_case("odd head_dim", "\"hidden_size\": 64", "\"hidden_size\": 64, \"head_dim\": 15", bad, "'head_dim'");

    const model_config plain = parse_config(
        R"({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 64, "eos_token_id": 2})", "plain.json");
    CHECK(plain.n_head_kv == 2 && plain.tie_word_embeddings && plain.rope_long_factor.empty() &&
              plain.logit_divisor() == 1.0f && plain.eos_token_ids == std::vector<int32_t>({2}) &&
              plain.bos_token_id == -1 && plain.rope_mscale() == 1.0f,
          "defaults: kv heads %d, tied %d, %zu factors, divisor %g, eos %zu id(s), bos %d", plain.n_head_kv,
          int(plain.tie_word_embeddings), plain.rope_long_factor.size(), plain.logit_divisor(),
          plain.eos_token_ids.size(), plain.bos_token_id);
}

// ------------------------------------------------------------------------------------------------------------
// good checkpoints

// Largest |loaded - generated| over one tensor; the generated values are rounded through the file dtype first.
float max_diff(const tensor_desc & v, const tiny_model_spec & s, const std::string & name) {
    for (const tiny_tensor_desc & d : tiny_tensor_list(s)) {
        if (d.name != name) continue;
        std::vector<float> vals;
        tiny_tensor_values(s, d, vals);
        float m = 0.0f;
        for (size_t i = 0; i < vals.size(); i++) {
            const float want = d.type == dtype::f32 ? vals[i]
                               : d.type == dtype::f16 ? f16_to_f32(f32_to_f16(vals[i]))
                                                      : bf16_to_f32(f32_to_bf16(vals[i]));
            m = std::max(m, std::fabs(tensor_value(v, int64_t(i)) - want));
        }
        return vals.size() == size_t(v.rows * v.cols) ? m : INFINITY;
    }
    return INFINITY;
}

uint64_t expected_params(const tiny_model_spec & s) {
    uint64_t n = 0;
    for (const tiny_tensor_desc & d : tiny_tensor_list(s)) {
        uint64_t k = 1;
        for (int64_t v : d.shape) k *= uint64_t(v);
        n += k;
    }
    return n;
}

void good_case(const char * label, const tiny_model_spec & s, bool use_mmap) {
    const std::string dir = make_temp_dir("loader");
    write_tiny_model(dir, s);
    try {
        const auto m = load_model_files(dir, use_mmap);
        const model_weights & w = m->weights;
        const layer_weights & last = w.layers.back();
        const std::string     lp = "model.layers." + std::to_string(s.n_layer - 1) + ".";
        const float d = std::max({max_diff(w.embed, s, "model.embed_tokens.weight"),
                                  max_diff(last.w_down, s, lp + "mlp.down_proj.weight"),
                                  max_diff(last.ffn_norm, s, lp + "post_attention_layernorm.weight"),
                                  max_diff(w.norm, s, "model.norm.weight")});
        CHECK(d == 0.0f && int32_t(w.layers.size()) == s.n_layer, "%s: %zu layers, values match the writer (max diff %g)",
              label, w.layers.size(), d);
        CHECK(w.weight_type == s.weight_type && w.norm.type == s.norm_type && w.layers[0].wq.rows == s.n_embd &&
                  w.layers[0].wk.rows == s.n_head_kv * s.head_dim() && w.norm.rows == 1 && w.norm.cols == s.n_embd,
              "%s: weight_type %s, norms %s, wq %lldx%lld, wk rows %lld", label, dtype_name(w.weight_type),
              dtype_name(w.norm.type), (long long) w.layers[0].wq.rows, (long long) w.layers[0].wq.cols,
              (long long) w.layers[0].wk.rows);
        if (s.tie_word_embeddings) {
            CHECK(w.head.data == w.embed.data, "%s: tied head uses the embedding", label);
        } else {
            CHECK(w.head.data != w.embed.data && max_diff(w.head, s, "lm_head.weight") == 0.0f,
                  "%s: untied head is lm_head.weight", label);
        }
        CHECK(w.n_params == expected_params(s), "%s: n_params %llu (want %llu), n_bytes %llu", label,
              (unsigned long long) w.n_params, (unsigned long long) expected_params(s),
              (unsigned long long) w.n_bytes);
    } catch (const std::exception & e) {
        CHECK(false, "%s: load failed: %s", label, e.what());
    }
    remove_dir(dir);
}

void test_good_loads() {
    tiny_model_spec s;
    good_case("single BF16 tied, mmap", s, true);
    good_case("single BF16 tied, read", s, false);
    tiny_model_spec sh = s;
    sh.n_shards = 3;
    sh.tie_word_embeddings = false;
    good_case("3 shards BF16 untied", sh, true);
    tiny_model_spec f16 = s;
    f16.weight_type = f16.norm_type = dtype::f16;
    good_case("F16", f16, true);
    tiny_model_spec f32 = s;
    f32.weight_type = f32.norm_type = dtype::f32;
    f32.n_shards = 2;
    good_case("F32, 2 shards", f32, false);
    tiny_model_spec mixed = s;
    mixed.norm_type = dtype::f32;
    good_case("F32 norms + BF16 matrices", mixed, true);

    // Extra tensors are ignored; a tied checkpoint's stray lm_head.weight (even with a wrong shape) too; the
    // raw writer does not sort by dtype, so the F32 norms land at odd offsets and get realigned copies.
    const std::string dir = make_temp_dir("loader");
    std::vector<raw_tensor> ts = tiny_raw_tensors(mixed);
    ts.insert(ts.begin(), raw_tensor{"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {3}, std::string(12, 'x')});
    ts.push_back(raw_tensor{"lm_head.weight", "BF16", {1}, std::string(2, '\0')});
    ts.insert(ts.begin(), raw_tensor{"odd", "U8", {3}, "abc"});
    write_file(dir + "/config.json", tiny_config_json(mixed));
    write_file(dir + "/model.safetensors", safetensors_bytes(ts, "{\"format\":\"pt\"}"));
    try {
        const auto m = load_model_files(dir, true);
        const float d = max_diff(m->weights.norm, mixed, "model.norm.weight");
        CHECK(d == 0.0f && uintptr_t(m->weights.norm.data) % 4 == 0,
              "extra tensors + __metadata__ ignored, misaligned F32 norm realigned (diff %g)", d);
    } catch (const std::exception & e) {
        CHECK(false, "extra tensors: load failed: %s", e.what());
    }
    remove_dir(dir);
}

// ------------------------------------------------------------------------------------------------------------
// broken checkpoints

void load_case(const char * label, const std::string & dir, int32_t status, std::initializer_list<const char *> needles) {
    expect_error(label, status, needles, [&] { load_model_files(dir, true); });
}

// Writes config + a single model.safetensors with `bytes` into a fresh dir and expects the error.
void file_case(const char * label, const tiny_model_spec & s, const std::string & bytes, int32_t status,
               std::initializer_list<const char *> needles) {
    const std::string dir = make_temp_dir("loader");
    write_file(dir + "/config.json", tiny_config_json(s));
    write_file(dir + "/model.safetensors", bytes);
    load_case(label, dir, status, needles);
    remove_dir(dir);
}

raw_tensor & find(std::vector<raw_tensor> & ts, const std::string & name) {
    for (raw_tensor & t : ts) {
        if (t.name == name) return t;
    }
    throw std::runtime_error("no tensor " + name);
}

void test_bad_loads() {
    const int32_t bad = MINICPM_STATUS_BAD_MODEL;
    const tiny_model_spec s;
    const std::vector<raw_tensor> good = tiny_raw_tensors(s);
    const std::string bytes = safetensors_bytes(good);
    const std::string up = "model.layers.1.mlp.up_proj.weight";

    file_case("truncated data", s, bytes.substr(0, bytes.size() - 100), bad,
              {"model.safetensors", "model.norm.weight", "outside the data section"});
    file_case("truncated to 5 bytes", s, bytes.substr(0, 5), bad, {"model.safetensors", "too small"});
    std::string huge = bytes;
    huge[7] = '\x01';  // header length around 2^56
    file_case("header length past the end", s, huge, bad, {"model.safetensors", "runs past the end of the file"});
    std::string junk = bytes;
    junk[8] = 'x';
    file_case("invalid JSON header", s, junk, bad, {"model.safetensors", "invalid JSON at byte 0"});

    std::vector<raw_tensor> ts = good;
    find(ts, up).dtype = "I64";
    find(ts, up).shape = {find(ts, up).shape[0] / 4, find(ts, up).shape[1]};
    file_case("I64 tensor", s, safetensors_bytes(ts), MINICPM_STATUS_UNSUPPORTED, {up.c_str(), "I64"});

    ts = good;
    find(ts, up).shape = {find(ts, up).shape[1], find(ts, up).shape[0]};
    file_case("wrong shape", s, safetensors_bytes(ts), bad, {up.c_str(), "has shape [64, 128], expected [128, 64]"});

    ts = good;
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const raw_tensor & t) { return t.name == up; }), ts.end());
    file_case("missing tensor", s, safetensors_bytes(ts), bad, {"model.safetensors", "missing tensor", up.c_str()});

    // Header edits keep the length, so the data section is unchanged.
    const std::string & shifted = bytes;
    const std::string norm_key = "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[64],\"data_offsets\":[";
    const size_t at = shifted.find(norm_key);
    const size_t num_at = at + norm_key.size();
    const size_t comma = shifted.find(',', num_at);
    const std::string begin_str = shifted.substr(num_at, comma - num_at);
    const size_t close = shifted.find(']', comma);
    std::string past = shifted;
    past.replace(comma + 1, close - comma - 1, std::string(close - comma - 1, '9'));
    file_case("offsets past the end", s, past, bad, {"model.norm.weight", "outside the data section"});
    std::string mismatch = shifted;
    mismatch.replace(num_at, begin_str.size(), "0" + std::string(begin_str.size() - 1, ' '));  // begin 0
    file_case("size / offset mismatch", s, mismatch, bad, {"model.norm.weight", "bytes, but its shape and dtype"});

    {
        // 'alias' reuses the first tensor's bytes
        std::vector<header_entry> es;
        for (const raw_tensor & t : good) es.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
        std::string h = safetensors_header_json(es);
        h.insert(1, "\"alias\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},");
        while ((8 + h.size()) % 8 != 0) h += ' ';
        std::string data;
        for (const raw_tensor & t : good) data += t.bytes;
        file_case("overlapping tensors", s, le64(h.size()) + h + data, bad, {"'alias'", "overlap"});
    }

    ts = good;
    find(ts, "model.layers.1.self_attn.v_proj.weight").dtype = "F16";
    {
        // Formats may differ between tensors (an LM head in BF16 beside other projections): each descriptor
        // carries its own.
        const std::string dir = make_temp_dir("loader");
        write_file(dir + "/config.json", tiny_config_json(s));
        write_file(dir + "/model.safetensors", safetensors_bytes(ts));
        std::string err;
        dtype vt = dtype::f32, qt = dtype::f32;
        try {
            const auto files = load_model_files(dir, true);
            vt = files->weights.layers[1].wv.type;
            qt = files->weights.layers[1].wq.type;
        } catch (const error & e) {
            err = e.what();
        }
        remove_dir(dir);
        CHECK(err.empty() && vt == dtype::f16 && qt == dtype::bf16,
              "mixed projection formats load: v_proj %s, q_proj %s %s", dtype_name(vt), dtype_name(qt), err.c_str());
    }

    tiny_model_spec untied = s;
    untied.tie_word_embeddings = false;
    file_case("untied without lm_head", untied, bytes, bad, {"lm_head.weight", "tie_word_embeddings"});

    // sharded layouts
    tiny_model_spec sh = s;
    sh.n_shards = 2;
    std::string dir = make_temp_dir("loader");
    write_tiny_model(dir, sh);
    std::filesystem::remove(dir + "/" + tiny_shard_name(1, 2));
    load_case("missing shard file", dir, MINICPM_STATUS_IO, {tiny_shard_name(1, 2).c_str(), "cannot open"});
    remove_dir(dir);

    dir = make_temp_dir("loader");
    write_tiny_model(dir, sh);
    std::string index = read_file(dir + "/model.safetensors.index.json");
    const std::string moved = "\"model.norm.weight\": \"" + tiny_shard_name(1, 2) + "\"";
    const size_t mi = index.find(moved);
    if (CHECK(mi != std::string::npos, "index lists model.norm.weight in the second shard")) {
        index.replace(mi, moved.size(), "\"model.norm.weight\": \"" + tiny_shard_name(0, 2) + "\"");
        write_file(dir + "/model.safetensors.index.json", index);
        load_case("index names a tensor absent from its shard", dir, bad,
                  {"model.norm.weight", tiny_shard_name(0, 2).c_str(), "no such tensor"});
        index.replace(mi, moved.size(), "\"model.norm.weight\": \"../" + tiny_shard_name(1, 2).substr(3) + "\"");
        write_file(dir + "/model.safetensors.index.json", index);
        load_case("shard path outside the directory", dir, bad, {"model.norm.weight", "model directory"});
    }
    remove_dir(dir);

    dir = make_temp_dir("loader");
    load_case("missing config.json", dir, MINICPM_STATUS_IO, {"config.json", "cannot open"});
    write_file(dir + "/config.json", tiny_config_json(s));
    load_case("no weights file", dir, MINICPM_STATUS_IO, {"model.safetensors.index.json"});
    write_file(dir + "/config.json", "{\"hidden_size\": 64}");
    load_case("config missing fields", dir, bad, {"config.json", "'vocab_size' is missing"});
    remove_dir(dir);
}

}  // namespace

int main() {
    test_json();
    test_f16();
    test_real_configs();
    test_bad_configs();
    test_good_loads();
    test_bad_loads();
    return finish();
}
