// FR-Spec token lists: freq_N.pt as torch.save writes it (a zip archive holding archive/data.pkl, protocol-2
// pickle of a list of ints, or of a 1-D LongTensor whose storage is archive/data/0), built here byte by byte
// from the format, stored and deflated; a plain int32 file; and malformed inputs.
#include "model/token-list.h"
#include "model/zip-archive.h"
#include "tests/tiny-model.h"

#include <fstream>

using bytes = std::vector<uint8_t>;

static void put16(bytes & b, uint32_t v) { b.push_back(uint8_t(v)), b.push_back(uint8_t(v >> 8)); }
static void put32(bytes & b, uint32_t v) { put16(b, v & 0xffff), put16(b, v >> 16); }
static void put(bytes & b, const std::string & s) { b.insert(b.end(), s.begin(), s.end()); }

static uint32_t crc32(const bytes & d) {
    uint32_t c = 0xffffffffu;
    for (uint8_t x : d) {
        c ^= x;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

struct member {
    std::string name;
    bytes       data;       // as stored in the archive
    uint32_t    method = 0;  // 0 stored, 8 deflate
    uint32_t    usize = 0, crc = 0;
};

// A zip archive like PyTorch's writer: local headers, data, central directory, end record.
static bytes zip(std::vector<member> ms) {
    bytes z;
    std::vector<uint32_t> offs;
    for (member & m : ms) {
        if (m.method == 0) m.usize = uint32_t(m.data.size()), m.crc = crc32(m.data);
        offs.push_back(uint32_t(z.size()));
        put32(z, 0x04034b50u), put16(z, 20), put16(z, 0), put16(z, uint16_t(m.method)), put16(z, 0), put16(z, 0);
        put32(z, m.crc), put32(z, uint32_t(m.data.size())), put32(z, m.usize);
        put16(z, uint16_t(m.name.size())), put16(z, 0), put(z, m.name);
        z.insert(z.end(), m.data.begin(), m.data.end());
    }
    const uint32_t cd = uint32_t(z.size());
    for (size_t i = 0; i < ms.size(); ++i) {
        const member & m = ms[i];
        put32(z, 0x02014b50u), put16(z, 20), put16(z, 20), put16(z, 0), put16(z, uint16_t(m.method));
        put16(z, 0), put16(z, 0), put32(z, m.crc), put32(z, uint32_t(m.data.size())), put32(z, m.usize);
        put16(z, uint16_t(m.name.size())), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0), put32(z, 0);
        put32(z, offs[i]), put(z, m.name);
    }
    const uint32_t cd_size = uint32_t(z.size()) - cd;
    put32(z, 0x06054b50u), put16(z, 0), put16(z, 0), put16(z, uint16_t(ms.size())), put16(z, uint16_t(ms.size()));
    put32(z, cd_size), put32(z, cd), put16(z, 0);
    return z;
}

// pickle.dumps(ids, protocol=2): PROTO 2, EMPTY_LIST, BINPUT 0, then MARK items APPENDS per 1000 (one item:
// item APPEND), STOP; ints as BININT1 / BININT2 / BININT.
static bytes pickle_list(const std::vector<int32_t> & ids) {
    bytes b = {0x80, 0x02, ']', 'q', 0x00};
    auto item = [&](int32_t x) {
        if (x >= 0 && x < 256) b.push_back('K'), b.push_back(uint8_t(x));
        else if (x >= 0 && x < 65536) b.push_back('M'), put16(b, uint32_t(x));
        else b.push_back('J'), put32(b, uint32_t(x));
    };
    if (ids.size() == 1) {
        item(ids[0]), b.push_back('a');
    } else {
        for (size_t i = 0; i < ids.size(); i += 1000) {
            b.push_back('(');
            for (size_t j = i; j < ids.size() && j < i + 1000; ++j) item(ids[j]);
            b.push_back('e');
        }
    }
    b.push_back('.');
    return b;
}

// torch.save(torch.tensor(ids)) with the legacy LongStorage persistent id, as torch 2.x writes it.
static bytes pickle_tensor(int32_t numel) {
    bytes b = {0x80, 0x02};
    put(b, "ctorch._utils\n_rebuild_tensor_v2\nq\x01(("), put(b, std::string("X\x07\x00\x00\x00storage", 12));
    put(b, "q\x02" "ctorch\nLongStorage\nq\x03"), put(b, std::string("X\x01\x00\x00\x00" "0", 6));
    put(b, "q\x04"), put(b, std::string("X\x03\x00\x00\x00" "cpu", 8)), put(b, "q\x05M"), put16(b, uint32_t(numel));
    put(b, "tq\x06QK"), b.push_back(0), b.push_back('M'), put16(b, uint32_t(numel));
    put(b, "\x85q\x07K\x01\x85q\x08\x89" "ccollections\nOrderedDict\nq\t)Rq\ntq\x0bRq\x0c.");
    return b;
}

static const char * k_deflated_hex =  // zlib raw deflate (level 9, dynamic Huffman) of pickle_list(0, 3, .., 1797, 73447, 2)
    "05c1070010021440c1feccc88a888888cc8cac888848df8b88888814112922b2574444648bac6c11599115111191151111111111b9bb407b"
    "0e6cb0693528abace5ab51ad528dab4935ad66d5bc5a54cb6a559bd756b54db5a91dab6db5abf6d5a13a56a7aaea525dab5b75af1ed5b37a"
    "55efea5bfdaa7f0da84135b886d4d03aaf2eac4b6a580daf1135b246d5e8bab96eab3135b6eead71f5503d5ae36b424dace76a524dae576b"
    "4a4dad6935bd66d4cc9a559fd5ec9a53736b5ecdaf05b5b016d5e25a524b6b192a84b09cb0a2b0b2b09ab086b096b08eb09eb081b091b089"
    "b099b0a5b0b5b09db083b0b3b0abb0bbb0a7b0b7b0afd05940385038583854385c3852385a3856e8239c209c249c220c144e17ce14ce16ce"
    "152e102e162e13ae10ae12ae11ae136e106e126e15ee10ee12ee11ee171e141e111e179e149e169e155e105e125e115e17de14de16de15de"
    "173e143e163e15be10be12be11be137e107e127e117e13fe10fe12fe11fe134471a5a1b282b292b2aab2bab2a6b2b6b2aeb2beb2a1b2b1b2"
    "a9b285d25ad956d95ed949d945d94dd943d94bd947d94fd95f394039483944394c3942394a3946394e395e395139593955394d3943394b39"
    "47395fb948b954b95cb952b95ab956b95eb951b945b95db953b95bb94f79407958794c7942794a7946795e79517959794d7943794b794779"
    "4ff940f948f944f95cf952f95af956f95ef951f959f955f95df953f95bf95769609891c6f246236315a3b1d1c4686a34339a1b2d8c96462b"
    "6373632b631ba38db1a3d1d66867b4373a181d8d4e46195d8cae4637a3bbd1c3e869f4327a1b7d8d7e467f638031c8186c0c31861ae71917"
    "1a9718c38ce1c60863a431ca186ddc6cdc668c31c61af71ae38c878c478df1c60463a2f19c31c9986cbc6a4c31a61ad38ce9c60c63a631cb"
    "f8cc986dcc31e61af38cf9c60263a1b1c8586c2c31961acb0c75c259ce59d159d959cd59c359cb59c759cfd9c0d9c8d9c4d9ccd9d2d9dad9"
    "ced9c1d9d9d9d5d9ddd9d3d9dbd9d7e9ece01ce81cec1cea1cee1ce91ced1cebf4714e704e724e71063aa73b673a673be73a1738173b9739"
    "57385739d738d73937383739b73a77387739f738f73b0f3a8f388f3b4f3a4f3bcf3a2f382f39af38af3b6f3a6f3bef3aef3b1f3a1f3b9f3a"
    "5f385f39df38df393f383f39bf38bf397f387f39ff38ff391278d030582158295835583d5833583b5837583fd830d838d834d822681d6c1b"
    "6c1fec14ec12ec16ec11ec15ec13ec17ec1f1c101c141c121c161c111c151c131c171c1f9c189c1c9c1a9c169c119c159c139c1f5c145c1a"
    "5c1e5c195c1d5c1b5c1fdc18dc12dc1edc19dc1ddc173c103c1c3c163c113c153c133c1fbc18bc1cbc16bc11bc15bc13bc177c107c147c12"
    "7c1e7c197c1d7c1b7c1ffc18fc1cfc1afc1efc19fc1dfc1b34482cc964f9a451b24ad2386992344d9a25cd931649cba455b279b255b24dd2"
    "26d931699bb44bda271d928e49a7a4922e49d7a45bd23de991f44c7a25bd93be49bfa47f322019940c4e86244393f3920b934b9261c9f064"
    "44323219958c4e6e4e6e4bc62463937b9371c943c9a3c9f864423231792e99944c4e5e4da624539369c9f46446323399957c96cc4ee62473"
    "9379c9fc6441b23059942c4e96244b93658936241a769ed75c1a94f669fd3f";

static bytes unhex(const char * h) {
    bytes b;
    for (size_t i = 0; h[i] && h[i + 1]; i += 2) b.push_back(uint8_t(std::stoi(std::string(h + i, 2), nullptr, 16)));
    return b;
}

static bool throws(const bytes & b, const char * want, std::string & msg) {
    try {
        minicpm::parse_token_list(b.data(), b.size(), "t");
    } catch (const minicpm::error & e) {
        msg = e.what();
        return msg.find(want) != std::string::npos;
    }
    msg = "(no error)";
    return false;
}

int main() {
    // A frequency list shaped like freq_32768.pt: a permutation of part of a 73448 vocabulary, EOS (2) last.
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < 4999; ++i) ids.push_back(int32_t((int64_t(i) * 7919 + 11) % 73448));
    ids.push_back(2);
    const bytes pkl = pickle_list(ids);
    const bytes pt = zip({{"archive/data.pkl", pkl}, {"archive/byteorder", {'l', 'i', 't', 't', 'l', 'e'}},
                          {"archive/version", {'3', '\n'}}, {"archive/.data/serialization_id", bytes(40, '1')}});
    const std::vector<int32_t> got = minicpm::parse_token_list(pt.data(), pt.size(), "freq.pt");
    CHECK(got == ids, "torch.save(list) stored zip (%zu bytes, pickle %zu bytes): %zu ids read, first %d %d %d, "
          "last %d", pt.size(), pkl.size(), got.size(), got.size() > 2 ? got[0] : -1, got.size() > 2 ? got[1] : -1,
          got.size() > 2 ? got[2] : -1, got.empty() ? -1 : got.back());

    const std::vector<int32_t> one = {73447};
    const bytes pt1 = zip({{"freq_1/data.pkl", pickle_list(one)}});
    CHECK(minicpm::parse_token_list(pt1.data(), pt1.size(), "one") == one, "one-element list (APPEND), other "
          "archive prefix");

    // 1-D LongTensor: storage data/0 holds int64.
    std::vector<int32_t> tids = {7, 70000, 2, 500, 1};
    bytes storage;
    for (int32_t x : tids) put32(storage, uint32_t(x)), put32(storage, 0);
    const bytes ptt = zip({{"archive/data.pkl", pickle_tensor(int32_t(tids.size()))}, {"archive/data/0", storage}});
    std::vector<int32_t> gt;
    std::string err;
    try {
        gt = minicpm::parse_token_list(ptt.data(), ptt.size(), "tensor");
    } catch (const std::exception & e) {
        err = e.what();
    }
    CHECK(gt == tids, "torch.save(LongTensor) zip: %zu ids read %s", gt.size(), err.c_str());

    // Deflated member (a zip writer other than torch's, or a re-zipped file).
    std::vector<int32_t> want;
    for (int32_t i = 0; i < 1800; i += 3) want.push_back(i);
    want.push_back(73447), want.push_back(2);
    const bytes defl = unhex(k_deflated_hex);
    const bytes plain = pickle_list(want);
    member m{"archive/data.pkl", defl, 8, uint32_t(plain.size()), crc32(plain)};
    const bytes ptd = zip({m});
    std::vector<uint8_t> inflated;
    minicpm::inflate_raw(defl.data(), defl.size(), inflated);
    CHECK(inflated == plain, "inflate (dynamic Huffman block): %zu -> %zu bytes, equal to the pickle written here",
          defl.size(), inflated.size());
    CHECK(minicpm::parse_token_list(ptd.data(), ptd.size(), "deflated") == want, "deflated data.pkl: %zu ids",
          want.size());

    // Plain int32 file, through load_token_list with the vocabulary check.
    const std::string dir = minicpm_test::make_temp_dir("tokenlist");
    {
        std::ofstream f(dir + "/freq.bin", std::ios::binary);
        bytes raw;
        for (int32_t x : ids) put32(raw, uint32_t(x));
        f.write(reinterpret_cast<const char *>(raw.data()), std::streamsize(raw.size()));
        std::ofstream g(dir + "/freq.pt", std::ios::binary);
        g.write(reinterpret_cast<const char *>(pt.data()), std::streamsize(pt.size()));
    }
    CHECK(minicpm::load_token_list(dir + "/freq.bin", 73448) == ids && minicpm::load_token_list(dir + "/freq.pt", 73448) == ids,
          "load_token_list: int32 file and .pt file agree (%zu ids)", ids.size());
    try {
        minicpm::load_token_list(dir + "/freq.pt", 4096);
        CHECK(false, "vocabulary check: no error");
    } catch (const minicpm::error & e) {
        CHECK(std::string(e.what()).find("outside the vocabulary") != std::string::npos, "vocabulary check: %s", e.what());
    }
    minicpm_test::remove_dir(dir);

    std::string msg;
    bool ok = throws(bytes{1, 2, 3}, "neither a zip", msg);
    CHECK(ok, "3 bytes: %s", msg.c_str());
    bytes cut = pt;
    cut.resize(cut.size() / 2);
    ok = throws(cut, "zip", msg);
    CHECK(ok, "truncated zip: %s", msg.c_str());
    ok = throws(zip({{"archive/version", {'3'}}}), "data.pkl", msg);
    CHECK(ok, "no data.pkl: %s", msg.c_str());
    bytes evil = {0x80, 0x02, 'c'};
    put(evil, std::string("os\nsystem\n(X\x02\x00\x00\x00lstR.", 21));
    ok = throws(zip({{"archive/data.pkl", evil}}), "unsupported global os.system", msg);
    CHECK(ok, "os.system REDUCE refused: %s", msg.c_str());
    bytes trunc_pkl = pkl;
    trunc_pkl.resize(100);
    ok = throws(zip({{"archive/data.pkl", trunc_pkl}}), "pickle", msg);
    CHECK(ok, "truncated pickle: %s", msg.c_str());
    return minicpm_test::finish();
}
