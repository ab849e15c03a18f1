// pytorch_model.bin (torch.save zip + pickle) read without Python: the committed file PyTorch wrote
// (data/make-torch-state.py: bf16 / f16 / f32, two tensors on one storage, a row view with a storage offset, a
// Parameter, an OrderedDict with _metadata) against the values the generator's formula gives; then checkpoints
// written by the project's writer (tests/torch-bin.h) as one file, as shards and with zip64 records, which must
// load bit for bit as their safetensors twins. Malformed files: test-fuzz-torch-bin.
#include "model/safetensors.h"
#include "model/torch-pickle.h"
#include "tests/tiny-model.h"

#include <map>

using namespace minicpm;
using namespace minicpm_test;

namespace {

// The generator's value of storage element k (exact in bf16 and f16).
double value(int64_t k) { return double((k * 7) % 23 - 11) / 8.0; }

struct expected {
    const char *         name;
    const char *         dtype;
    std::vector<int64_t> shape;
    int64_t              seed, offset;  // element i is value(seed + offset + i)
};

double element(const uint8_t * p, const std::string & dtype) {
    if (dtype == "F32") {
        float f;
        std::memcpy(&f, p, 4);
        return f;
    }
    const uint16_t h = uint16_t(p[0] | p[1] << 8);
    return dtype == "F16" ? f16_to_f32(h) : bf16_to_f32(h);
}

void check_fixture() {
    const std::string path = std::string(MINICPM_SOURCE_DIR) + "/csrc/tests/data/torch-state.bin";
    const mapped_file f(path, true);
    const safetensors_header h = parse_torch_checkpoint(f.data(), f.size(), path);
    const std::vector<expected> want = {{"weight", "F32", {2, 3}, 0, 0},         {"bf16.matrix", "BF16", {4, 6}, 100, 0},
                                        {"f16.vector", "F16", {5}, 200, 0},     {"shared.a", "F32", {2, 2}, 300, 0},
                                        {"shared.b", "F32", {2, 3}, 300, 6},    {"view.row", "BF16", {4}, 400, 4},
                                        {"param", "F16", {2, 2}, 500, 0}};
    CHECK(h.entries.size() == want.size() && h.data_offset == 0, "fixture: %zu tensors (want %zu), data offset %llu",
          h.entries.size(), want.size(), (unsigned long long) h.data_offset);
    std::map<std::string, const safetensors_entry *> by_name;
    for (const safetensors_entry & e : h.entries) by_name[e.name] = &e;
    for (const expected & w : want) {
        const auto it = by_name.find(w.name);
        if (!CHECK(it != by_name.end(), "fixture: tensor '%s' present", w.name)) continue;
        const safetensors_entry & e = *it->second;
        int64_t n = 1;
        for (int64_t d : w.shape) n *= d;
        const uint64_t esize = safetensors_dtype_size(w.dtype);
        double max_diff = e.end - e.begin == uint64_t(n) * esize ? 0.0 : 1e9;
        for (int64_t i = 0; i < n && max_diff == 0.0; ++i)
            max_diff = std::max(max_diff, std::fabs(element(f.data() + e.begin + uint64_t(i) * esize, e.dtype) -
                                                    value(w.seed + w.offset + i)));
        CHECK(e.dtype == w.dtype && e.shape == w.shape && max_diff == 0.0,
              "fixture: '%s' %s [%zu dims] bytes [%llu, %llu): max |value - generator's| = %g", w.name, e.dtype.c_str(),
              e.shape.size(), (unsigned long long) e.begin, (unsigned long long) e.end, max_diff);
    }
    if (by_name.count("shared.a") && by_name.count("shared.b")) {
        const int64_t gap = int64_t(by_name["shared.b"]->begin) - int64_t(by_name["shared.a"]->begin);
        CHECK(gap == 6 * 4, "fixture: shared.b starts %lld bytes after shared.a in their one storage (want 24)",
              (long long) gap);
        CHECK(by_name["shared.a"]->begin % 64 == 0, "fixture: storages are 64-byte aligned (shared at %llu)",
              (unsigned long long) by_name["shared.a"]->begin);
    }
}

// Every tensor of two loaded checkpoints, byte for byte.
size_t differing_tensors(const model_weights & a, const model_weights & b, size_t & compared) {
    std::vector<std::pair<const tensor_desc *, const tensor_desc *>> pairs = {{&a.embed, &b.embed}, {&a.norm, &b.norm},
                                                                              {&a.head, &b.head}};
    for (size_t l = 0; l < a.layers.size() && l < b.layers.size(); ++l) {
        const layer_weights &A = a.layers[l], &B = b.layers[l];
        for (auto [x, y] : {std::pair{&A.attn_norm, &B.attn_norm}, {&A.wq, &B.wq}, {&A.wk, &B.wk}, {&A.wv, &B.wv},
                            {&A.wo, &B.wo}, {&A.ffn_norm, &B.ffn_norm}, {&A.w_gate, &B.w_gate}, {&A.w_up, &B.w_up},
                            {&A.w_down, &B.w_down}})
            pairs.push_back({x, y});
    }
    size_t bad = a.layers.size() != b.layers.size();
    for (auto [x, y] : pairs) {
        ++compared;
        bad += x->type != y->type || x->rows != y->rows || x->cols != y->cols ||
               std::memcmp(x->data, y->data, x->bytes()) != 0;
    }
    return bad;
}

void check_twins() {
    tiny_model_spec base;
    base.tie_word_embeddings = false;
    base.norm_type = dtype::f32;
    const std::string st_dir = make_temp_dir("bin-st");
    write_tiny_model(st_dir, base);
    const auto ref = load_model_files(st_dir, true);
    struct variant {
        const char * label;
        int32_t      shards;
        bool         zip64;
    };
    for (const variant v : {variant{"pytorch_model.bin", 1, false}, variant{"3 shards + index", 3, false},
                            variant{"zip64 records", 1, true}}) {
        const std::string dir = make_temp_dir("bin");
        tiny_model_spec s = base;
        s.torch_bin = true;
        s.n_shards = v.shards;
        if (v.zip64) {  // same tensors through a writer forced to zip64 (a 4 GiB file is too big for a test)
            write_file(dir + "/config.json", tiny_config_json(s));
            const std::vector<tiny_tensor_desc> all = tiny_tensor_list(s);
            torch_bin_writer w(dir + "/pytorch_model.bin", "pytorch_model", true);
            std::vector<float> vals;
            for (size_t i = 0; i < all.size(); ++i) {
                tiny_tensor_values(s, all[i], vals);
                w.storage(std::to_string(i), tiny_encode(vals, all[i].type));
                w.tensor({all[i].name, tiny_dtype_tag(all[i].type), all[i].shape, std::to_string(i)});
            }
            w.finish();
        } else {
            write_tiny_model(dir, s);
        }
        for (bool use_mmap : {true, false}) {
            try {
                const auto got = load_model_files(dir, use_mmap);
                size_t     compared = 0;
                const size_t bad = differing_tensors(ref->weights, got->weights, compared);
                CHECK(bad == 0, "%s (%s): %zu of %zu tensors differ from the safetensors twin", v.label,
                      use_mmap ? "mmap" : "read", bad, compared);
            } catch (const std::exception & e) {
                CHECK(false, "%s: load failed: %s", v.label, e.what());
            }
        }
        remove_dir(dir);
    }
    {  // both formats in one directory (as many hub repositories ship): the safetensors files win
        tiny_model_spec other = base;
        other.torch_bin = true;
        other.n_shards = 2;
        other.seed = base.seed + 1;
        write_tiny_model(st_dir, other);
        const auto got = load_model_files(st_dir, true);
        size_t     compared = 0;
        const size_t bad = differing_tensors(ref->weights, got->weights, compared);
        CHECK(bad == 0, "model.safetensors beside pytorch_model.bin.index.json (other weights): %zu of %zu tensors "
              "differ from the safetensors file", bad, compared);
    }
    remove_dir(st_dir);

    const std::string empty = make_temp_dir("bin-none");
    write_file(empty + "/config.json", tiny_config_json(base));
    expect_error("no weight file", MINICPM_STATUS_IO, {"pytorch_model.bin", "model.safetensors"},
                 [&] { load_model_files(empty, true); });
    remove_dir(empty);
}

}  // namespace

int main() {
    check_fixture();
    check_twins();
    return finish();
}
