// Malformed pytorch_model.bin files: each kind of damage named in a clear minicpm::error (truncated zip, bad
// central directory, zip64 records, unknown opcode or global, storage out of range or of two dtypes, a storage
// that is not its numel, non-contiguous tensors, non-tensor values), then randomized damage to the zip bytes and
// to data.pkl, through parse_torch_checkpoint and through load_model_files. Passes when nothing crashes, every
// rejection is a minicpm::error with a message, and every accepted file keeps its tensors inside the file.
// Fixed seed: the same inputs each run. Run under -DMINICPM_SANITIZE=ON for reads the checks cannot see.
#include "model/safetensors.h"
#include "model/torch-pickle.h"
#include "tests/tiny-model.h"

#include <chrono>

using namespace minicpm;
using namespace minicpm_test;

namespace {

constexpr int k_byte_inputs = 6000;
constexpr int k_pickle_inputs = 6000;
constexpr int k_file_inputs = 200;

std::string f32_bytes(int n, float v0) {
    std::string b(size_t(n) * 4, '\0');
    for (int i = 0; i < n; ++i) {
        const float v = v0 + float(i);
        std::memcpy(&b[size_t(i) * 4], &v, 4);
    }
    return b;
}

// A small state dict: storages "0" (6 floats) and "1" (4 floats) and the given tensors, as file bytes.
std::string state_dict(const std::string & dir, const std::vector<torch_bin_tensor> & ts, bool zip64 = false,
                       const std::string & pickle = "") {
    const std::string path = dir + "/sd.bin";
    torch_bin_writer w(path, "sd", zip64);
    w.storage("0", f32_bytes(6, 1.0f));
    w.storage("1", f32_bytes(4, 10.0f));
    for (const torch_bin_tensor & t : ts) w.tensor(t);
    w.finish(pickle);
    return read_file(path);
}

std::vector<torch_bin_tensor> good_tensors() {
    return {{"a", "F32", {2, 3}, "0"}, {"b", "F32", {2}, "1", 2}, {"c", "F32", {1, 4}, "0", 1, {7, 1}}};
}

void parse(const std::string & bytes) {
    std::vector<uint8_t> buf(bytes.begin(), bytes.end());  // exact size: a sanitizer sees reads past the end
    parse_torch_checkpoint(buf.data(), buf.size(), "fuzz.bin");
}

// Bytes of data.pkl as the writer makes it for good_tensors().
std::string good_pickle() { return torch_state_pickle(good_tensors(), {{"0", 24}, {"1", 16}}); }

void named_cases(const std::string & dir) {
    const std::string good = state_dict(dir, good_tensors());
    try {
        std::vector<uint8_t> buf(good.begin(), good.end());
        const safetensors_header h = parse_torch_checkpoint(buf.data(), buf.size(), "good.bin");
        float c0 = 0;
        if (h.entries.size() == 3) std::memcpy(&c0, buf.data() + h.entries[2].begin, 4);
        CHECK(h.entries.size() == 3 && c0 == 2.0f, "the undamaged file: %zu tensors, c[0] = %g (storage 0 element 1)",
              h.entries.size(), double(c0));
    } catch (const std::exception & e) {
        CHECK(false, "the undamaged file: %s", e.what());
    }
    const int32_t BAD = MINICPM_STATUS_BAD_MODEL;
    expect_error("truncated zip", BAD, {"fuzz.bin", "zip"}, [&] { parse(good.substr(0, good.size() / 2)); });
    expect_error("empty file", BAD, {"zip"}, [&] { parse(""); });
    std::string cd = good;
    const size_t at = cd.rfind(std::string("PK\x01\x02", 4));
    cd[at + 1] = 'X';
    expect_error("bad central directory entry", BAD, {"central directory"}, [&] { parse(cd); });
    std::string cd_off = good;
    cd_off[cd_off.size() - 5] = char(0x7f);  // central directory offset far past the end
    expect_error("central directory past the end", BAD, {"central directory"}, [&] { parse(cd_off); });
    std::string z64 = state_dict(dir, good_tensors(), true);
    try {
        parse(z64);
        CHECK(true, "zip64 records read");
    } catch (const std::exception & e) {
        CHECK(false, "zip64 records: %s", e.what());
    }
    z64[z64.rfind(std::string("PK\x06\x07", 4)) + 2] = 0;
    expect_error("zip64 without its locator", BAD, {"zip64"}, [&] { parse(z64); });
    std::string op = good_pickle();
    op.insert(op.size() - 1, "\xff");
    expect_error("unknown opcode", BAD, {"unsupported opcode 0xff"}, [&] { parse(state_dict(dir, good_tensors(), false, op)); });
    const std::string evil = std::string("\x80\x02" "cos\nsystem\n(X\x02\0\0\0lstR.", 24);
    expect_error("unknown GLOBAL", BAD, {"unsupported global os.system"},
                 [&] { parse(state_dict(dir, good_tensors(), false, evil)); });
    expect_error("storage out of range", BAD, {"'b'", "outside its storage"},
                 [&] { parse(state_dict(dir, {{"b", "F32", {3}, "1", 2}})); });
    expect_error("one storage read as two dtypes", BAD, {"'h'", "storage 0", "F32"},
                 [&] { parse(state_dict(dir, {{"f", "F32", {6}, "0"}, {"h", "F16", {12}, "0"}})); });
    expect_error("storage numel and bytes disagree", BAD, {"holds 24 bytes", "7 F32"},
                 [&] { parse(state_dict(dir, {{"a", "F32", {6}, "0", 0, {}, 7}})); });
    expect_error("non-contiguous tensor", BAD, {"'t'", "not contiguous"},
                 [&] { parse(state_dict(dir, {{"t", "F32", {3, 2}, "0", 0, {1, 3}}})); });
    expect_error("storage member missing", BAD, {"data/9"}, [&] { parse(state_dict(dir, {{"m", "F32", {1}, "9", 0, {}, 1}})); });
    expect_error("a value that is not a tensor", BAD, {"not a tensor"},
                 [&] { parse(state_dict(dir, {}, false, std::string("\x80\x02}(X\x01\0\0\0kK\x05u.", 15))); });
    expect_error("not a dict", BAD, {"no dict"}, [&] { parse(state_dict(dir, {}, false, "\x80\x02]." )); });
    std::string deep = "\x80\x02" + std::string(1000000, ']') + std::string(999999, 'a') + ".";
    expect_error("lists nested a million deep (freed without recursion)", BAD, {"no dict"},
                 [&] { parse(state_dict(dir, {}, false, deep)); });
    expect_error("stack underflow", BAD, {"underflow"}, [&] { parse(state_dict(dir, {}, false, "\x80\x02R.")); });
    expect_error("pickle ends early", BAD, {"ends early"},
                 [&] { parse(state_dict(dir, {}, false, good_pickle().substr(0, good_pickle().size() - 1))); });
}

struct tally {
    int accepted = 0, rejected = 0, bad = 0;
};

void one(const std::string & bytes, tally & t) {
    std::vector<uint8_t> buf(bytes.begin(), bytes.end());
    try {
        const safetensors_header h = parse_torch_checkpoint(buf.data(), buf.size(), "fuzz.bin");
        bool ok = h.data_offset == 0;
        for (const safetensors_entry & e : h.entries) ok = ok && e.begin <= e.end && e.end <= buf.size();
        if (ok) t.accepted++;
        else if (t.bad++ < 5) std::printf("accepted file breaks the bounds invariant\n");
    } catch (const minicpm::error & e) {
        if (std::string(e.what()).empty()) t.bad++;
        else t.rejected++;
    } catch (const std::exception & e) {
        if (t.bad++ < 5) std::printf("non-minicpm exception: %s\n", e.what());
    }
}

// One random edit of a byte string: flip, overwrite with a boundary value, insert, delete, truncate, duplicate.
void mutate(std::string & b, rng & r) {
    if (b.empty()) return b.push_back(char(r.next()));
    const size_t pos = r.below(b.size());
    switch (r.below(7)) {
        case 0: b[pos] ^= char(1u << r.below(8)); break;
        case 1: b[pos] = char("\x00\xff\x7f\x80\x01"[r.below(5)]); break;
        case 2: b.insert(pos, 1, char(r.next())); break;
        case 3: b.erase(pos, 1 + r.below(4)); break;
        case 4: b.resize(pos); break;
        case 5: {  // the draws in order, so every platform makes the same inputs
            const size_t from = r.below(b.size()), n = 1 + r.below(16);
            b.insert(pos, b.substr(from, n));
            break;
        }
        default: for (int k = 0; k < 4 && pos + size_t(k) < b.size(); ++k) b[pos + size_t(k)] = char(0xff); break;
    }
}

}  // namespace

int main() {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string dir = make_temp_dir("fuzz-bin");
    named_cases(dir);

    rng r{20261201};
    const std::vector<std::string> seeds = {state_dict(dir, good_tensors()), state_dict(dir, good_tensors(), true),
                                            read_file(std::string(MINICPM_SOURCE_DIR) + "/csrc/tests/data/torch-state.bin")};
    tally tb;
    for (int i = 0; i < k_byte_inputs; ++i) {
        std::string b = seeds[r.below(seeds.size())];
        for (size_t m = 1 + r.below(3); m > 0; --m) mutate(b, r);
        one(b, tb);
    }
    CHECK(tb.bad == 0 && tb.accepted + tb.rejected == k_byte_inputs,
          "zip bytes: %d inputs, %d accepted, %d rejected with a minicpm::error, %d bad", k_byte_inputs, tb.accepted,
          tb.rejected, tb.bad);
    CHECK(tb.accepted > 0 && tb.rejected > 0, "zip bytes: the mutations reach both outcomes");

    tally tp;
    const std::string pkl = good_pickle();
    for (int i = 0; i < k_pickle_inputs; ++i) {
        std::string p = pkl;
        for (size_t m = 1 + r.below(2); m > 0; --m) mutate(p, r);
        if (p.empty()) p = ".";
        one(state_dict(dir, good_tensors(), i % 8 == 0, p), tp);
    }
    CHECK(tp.bad == 0 && tp.accepted + tp.rejected == k_pickle_inputs,
          "data.pkl: %d inputs, %d accepted, %d rejected with a minicpm::error, %d bad", k_pickle_inputs, tp.accepted,
          tp.rejected, tp.bad);
    CHECK(tp.accepted > 0 && tp.rejected > 0, "data.pkl: the mutations reach both outcomes");

    // Whole checkpoints through the loader: a damaged pytorch_model.bin beside a good config.json.
    tiny_model_spec s;
    s.n_vocab = 64, s.n_embd = 16, s.n_head = 2, s.n_head_kv = 1, s.n_ff = 32, s.torch_bin = true;
    const std::string model = make_temp_dir("fuzz-bin-model");
    write_tiny_model(model, s);
    const std::string bin = read_file(model + "/pytorch_model.bin");
    tally tf;
    for (int i = 0; i < k_file_inputs; ++i) {
        std::string b = bin;
        for (size_t m = r.below(3); m > 0; --m) mutate(b, r);
        write_file(model + "/pytorch_model.bin", b);
        try {
            const auto mf = load_model_files(model, i % 2 == 0);
            if (mf->weights.layers.size() == size_t(mf->config.n_layer)) tf.accepted++;
            else tf.bad++;
        } catch (const minicpm::error & e) {
            if (std::string(e.what()).empty()) tf.bad++;
            else tf.rejected++;
        } catch (const std::exception & e) {
            if (tf.bad++ < 5) std::printf("non-minicpm exception from the loader: %s\n", e.what());
        }
    }
    CHECK(tf.bad == 0 && tf.accepted + tf.rejected == k_file_inputs,
          "checkpoints: %d inputs, %d loaded, %d rejected with a minicpm::error, %d bad", k_file_inputs, tf.accepted,
          tf.rejected, tf.bad);
    CHECK(tf.accepted > 0 && tf.rejected > 0, "checkpoints: the mutations reach both outcomes");
    remove_dir(model);
    remove_dir(dir);

    std::printf("fuzz time %.2f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return finish();
}
