// Randomized robustness test for the safetensors reader: mutated headers go to parse_safetensors_header and
// mutated checkpoints to load_model_files. Passes when nothing crashes, every rejection is a minicpm::error with
// a message, and every accepted header keeps its byte ranges inside the file. Fixed seed: same inputs each run.
// Run it under -DMINICPM_SANITIZE=ON to catch out-of-bounds reads the checks here cannot see.
#include "model/weights.h"
#include "tests/tiny-model.h"

#include <chrono>

using namespace minicpm;
using namespace minicpm_test;

namespace {

constexpr int k_header_inputs = 24000;
constexpr int k_file_inputs = 300;

const char * const k_numbers[] = {"1e300", "-1", "18446744073709551615", "18446744073709551616", "9223372036854775807",
                                  "9223372036854775808", "-9223372036854775808", "0", "-0", "1.5", "1e-400", "4294967296",
                                  "99999999999999999999999999", "2147483648", "1e19", "0.0", "65536"};
const char * const k_strings[] = {"\"I64\"", "\"F64\"", "\"BF16\"", "\"F32\"", "\"X9\"", "\"\"", "\"\\ud800\"",
                                  "\"__metadata__\"", "\"data_offsets\"", "\"shape\"", "\"dtype\"", "null", "[]", "{}"};
const char k_struct[] = "{}[]:,\"0123456789eE.-+\\ tfn";

// One random edit of a header's JSON text. `valid_json` picks only the edits that usually keep the JSON
// well-formed (numbers and strings swapped), so the checks behind the parser get exercised too.
void mutate_json(std::string & h, rng & r, bool valid_json) {
    const size_t pos = r.below(h.size() + 1);
    switch (valid_json ? 4 + r.below(2) : r.below(9)) {
        case 0:  // bit flip
            if (!h.empty()) h[r.below(h.size())] ^= char(1u << r.below(8));
            break;
        case 1:  // insert a structural character
            h.insert(pos, 1, k_struct[r.below(sizeof(k_struct) - 1)]);
            break;
        case 2:  // delete a run
            if (!h.empty()) h.erase(r.below(h.size()), 1 + r.below(4));
            break;
        case 3:  // truncate
            h.resize(r.below(h.size() + 1));
            break;
        case 4: {  // replace a number with an extreme one
            size_t d = h.find_first_of("0123456789", pos);
            if (d == std::string::npos) d = h.find_first_of("0123456789");
            if (d == std::string::npos) break;
            size_t e = h.find_first_not_of("0123456789", d);
            if (e == std::string::npos) e = h.size();
            h.replace(d, e - d, k_numbers[r.below(sizeof(k_numbers) / sizeof(k_numbers[0]))]);
            break;
        }
        case 5: {  // replace a whole string (quotes paired from the start) with another token
            std::vector<size_t> q;
            for (size_t i = 0; i < h.size(); i++) {
                if (h[i] == '"') q.push_back(i);
            }
            if (q.size() < 2) break;
            const size_t k = 2 * r.below(q.size() / 2);
            h.replace(q[k], q[k + 1] - q[k] + 1, k_strings[r.below(sizeof(k_strings) / sizeof(k_strings[0]))]);
            break;
        }
        case 6: {  // deep nesting in place of a value
            const size_t depth = 1 + r.below(2000);
            const size_t at = h.find(':', pos);
            if (at == std::string::npos) break;
            h.insert(at + 1, std::string(depth, '[') + "1" + std::string(r.below(2) ? depth : depth / 2, ']'));
            break;
        }
        case 7: {  // duplicate a slice elsewhere (repeats keys, entries, fragments)
            if (h.empty()) break;
            const size_t a = r.below(h.size());
            const size_t n = 1 + r.below(std::min<size_t>(h.size() - a, 200));
            h.insert(pos, h.substr(a, n));
            break;
        }
        default:  // random byte
            h.insert(pos, 1, char(r.next() & 0xff));
            break;
    }
}

// header text + its data section -> file bytes; the length field is usually right, sometimes hostile.
std::string pack(const std::string & h, const std::string & data, rng & r) {
    uint64_t len = h.size();
    switch (r.below(16)) {
        case 0: len = ~0ull; break;
        case 1: len = h.size() + data.size() + 1; break;  // one past the end
        case 2: len = r.next(); break;
        case 3: len = h.size() - std::min<size_t>(h.size(), 1 + r.below(8)); break;
        default: break;
    }
    std::string out = le64(len) + h + data;
    if (r.below(20) == 0) out.resize(r.below(out.size() + 1));
    return out;
}

struct tally {
    int accepted = 0;
    int rejected = 0;
    int bad = 0;  // wrong exception type, empty message, or an accepted header that breaks an invariant
};

void header_input(const std::string & bytes, tally & t) {
    // An exact-size heap copy, so a sanitizer flags any read past the end.
    std::vector<uint8_t> buf(bytes.begin(), bytes.end());
    try {
        const safetensors_header h = parse_safetensors_header(buf.data(), buf.size(), "fuzz.safetensors");
        bool ok = h.data_offset <= buf.size();
        for (const safetensors_entry & e : h.entries) ok = ok && e.begin <= e.end && e.end <= buf.size() - h.data_offset;
        if (ok) {
            t.accepted++;
        } else if (t.bad++ < 5) {
            std::printf("accepted header breaks the bounds invariant\n");
        }
    } catch (const minicpm::error & e) {
        if (std::string(e.what()).empty()) t.bad++;
        else t.rejected++;
    } catch (const std::exception & e) {
        if (t.bad++ < 5) std::printf("non-minicpm exception: %s\n", e.what());
    }
}

}  // namespace

int main() {
    const auto t0 = std::chrono::steady_clock::now();
    rng r{20260601};

    // Seeds: a few small layouts (tied, untied, mixed dtypes) split into header JSON and data.
    std::vector<std::pair<std::string, std::string>> seeds;
    std::vector<tiny_model_spec> specs(3);
    for (tiny_model_spec & s : specs) {
        s.n_vocab = 64;
        s.n_embd = 16;
        s.n_head = 2;
        s.n_head_kv = 1;
        s.n_ff = 32;
    }
    specs[1].tie_word_embeddings = false;
    specs[2].norm_type = dtype::f32;
    specs[2].weight_type = dtype::f16;
    for (const tiny_model_spec & s : specs) {
        const std::vector<raw_tensor> ts = tiny_raw_tensors(s);
        std::vector<header_entry> es;
        std::string data;
        for (const raw_tensor & t : ts) {
            es.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
            data += t.bytes;
        }
        seeds.push_back({safetensors_header_json(es, "{\"format\":\"pt\"}"), data});
    }

    tally th;
    for (int i = 0; i < k_header_inputs; i++) {
        const auto & seed = seeds[r.below(seeds.size())];
        std::string h = seed.first;
        const size_t n_mut = 1 + r.below(4);
        const bool   valid_json = r.below(3) == 0;
        for (size_t k = 0; k < n_mut; k++) mutate_json(h, r, valid_json);
        header_input(pack(h, seed.second, r), th);
    }
    header_input(std::string(), th);
    header_input(le64(0), th);
    header_input(le64(2) + "{}", th);
    CHECK(th.bad == 0 && th.accepted + th.rejected == k_header_inputs + 3,
          "headers: %d inputs, %d accepted, %d rejected with a minicpm::error, %d bad", k_header_inputs + 3,
          th.accepted, th.rejected, th.bad);
    CHECK(th.accepted > 0 && th.rejected > 0, "headers: the mutations reach both outcomes");

    // Whole checkpoints through the loader: a mutated model.safetensors, or (one time in ten each) a mutated
    // config.json or model.safetensors.index.json of a two-shard checkpoint.
    tally tf;
    const std::string dir = make_temp_dir("fuzz");
    const std::string sharded_dir = make_temp_dir("fuzz-shards");
    tiny_model_spec sharded = specs[1];
    sharded.n_shards = 2;
    write_tiny_model(sharded_dir, sharded);
    const std::string index = read_file(sharded_dir + "/model.safetensors.index.json");
    const auto load = [&](const std::string & d, bool use_mmap) {
        try {
            const auto mf = load_model_files(d, use_mmap);
            if (mf->weights.layers.size() == size_t(mf->config.n_layer)) tf.accepted++;
            else tf.bad++;
        } catch (const minicpm::error & e) {
            if (std::string(e.what()).empty()) tf.bad++;
            else tf.rejected++;
        } catch (const std::exception & e) {
            if (tf.bad++ < 5) std::printf("non-minicpm exception from the loader: %s\n", e.what());
        }
    };
    for (int i = 0; i < k_file_inputs; i++) {
        if (i % 10 == 9) {
            std::string idx = index;
            const size_t n_mut = 1 + r.below(3);
            const bool   valid_json = r.below(2) == 0;
            for (size_t m = 0; m < n_mut; m++) mutate_json(idx, r, valid_json);
            write_file(sharded_dir + "/model.safetensors.index.json", idx);
            load(sharded_dir, i % 2 == 0);
            continue;
        }
        const size_t k = r.below(specs.size());
        std::string cfg = tiny_config_json(specs[k]);
        std::string h = seeds[k].first;
        std::string file;
        if (r.below(10) == 0) {
            mutate_json(cfg, r, r.below(2) == 0);
            file = le64(h.size()) + h + seeds[k].second;
        } else {
            const size_t n_mut = r.below(3);
            const bool   valid_json = r.below(2) == 0;
            for (size_t m = 0; m < n_mut; m++) mutate_json(h, r, valid_json);
            file = pack(h, seeds[k].second, r);
            if (r.below(4) == 0 && file.size() > 8) {  // corrupt the data too: it must never matter to the loader
                for (int m = 0; m < 16; m++) file[8 + r.below(file.size() - 8)] = char(r.next() & 0xff);
            }
        }
        write_file(dir + "/config.json", cfg);
        write_file(dir + "/model.safetensors", file);
        load(dir, i % 2 == 0);
    }
    remove_dir(dir);
    remove_dir(sharded_dir);
    CHECK(tf.bad == 0 && tf.accepted + tf.rejected == k_file_inputs,
          "files: %d inputs, %d loaded, %d rejected with a minicpm::error, %d bad", k_file_inputs, tf.accepted,
          tf.rejected, tf.bad);
    CHECK(tf.accepted > 0 && tf.rejected > 0, "files: the mutations reach both outcomes");

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("fuzz time %.2f s\n", secs);
    return finish();
}
