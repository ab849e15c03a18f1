// The project's own writer of torch.save state dicts (pytorch_model.bin), byte for byte in the layout PyTorch
// writes: a zip archive "<archive>/data.pkl" (protocol-2 pickle of an OrderedDict of _rebuild_tensor_v2 calls
// whose storages are persistent ids), "<archive>/data/<key>" storages stored uncompressed at 64-byte aligned
// offsets, "<archive>/byteorder" and "<archive>/version"; zip64 records when asked or past 4 GiB. For make-model
// and the tests (loader, EAGLE head twins, fuzz), which must not need PyTorch.
//
//   torch_bin_writer w(path, "archive");
//   w.storage("0", bytes);                                   // one per storage, streamed to the file
//   w.tensor({"fc.weight", "BF16", {64, 128}, "0"});         // any number of views of the storages
//   w.finish();
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace minicpm_test {

struct torch_bin_tensor {
    std::string          name;
    std::string          dtype;  // safetensors tag of the storage class: BF16, F16, F32, I64, I32, ...
    std::vector<int64_t> shape;
    std::string          storage_key;
    int64_t              offset = 0;          // in elements
    std::vector<int64_t> stride = {};         // empty: contiguous
    int64_t              storage_numel = -1;  // -1: the stored bytes / element size
};

inline uint32_t crc32_of(const std::string & d) {
    uint32_t c = 0xffffffffu;
    for (unsigned char x : d) {
        c ^= x;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

inline int torch_elem_size(const std::string & tag) {
    if (tag == "F64" || tag == "I64") return 8;
    if (tag == "F32" || tag == "I32") return 4;
    if (tag == "BF16" || tag == "F16" || tag == "I16") return 2;
    return 1;
}

inline const char * torch_storage_class(const std::string & tag) {
    if (tag == "BF16") return "BFloat16Storage";
    if (tag == "F16") return "HalfStorage";
    if (tag == "F32") return "FloatStorage";
    if (tag == "F64") return "DoubleStorage";
    if (tag == "I64") return "LongStorage";
    if (tag == "I32") return "IntStorage";
    if (tag == "I16") return "ShortStorage";
    if (tag == "I8") return "CharStorage";
    if (tag == "BOOL") return "BoolStorage";
    return "ByteStorage";
}

// Protocol-2 pickle of OrderedDict(name -> tensor), as torch.save emits it (without the memo, which readers
// must not need).
inline std::string torch_state_pickle(const std::vector<torch_bin_tensor> & ts,
                                      const std::vector<std::pair<std::string, uint64_t>> & storage_bytes) {
    std::string p = "\x80\x02";
    auto str = [&](const std::string & s) {
        p += 'X';
        for (int i = 0; i < 4; ++i) p += char((s.size() >> (8 * i)) & 0xff);
        p += s;
    };
    auto num = [&](int64_t v) {
        if (v >= 0 && v < 256) p += 'K', p += char(v);
        else if (v >= 0 && v < 65536) p += 'M', p += char(v & 0xff), p += char(v >> 8);
        else if (v >= INT32_MIN && v <= INT32_MAX) {
            p += 'J';
            for (int i = 0; i < 4; ++i) p += char((uint64_t(v) >> (8 * i)) & 0xff);
        } else {
            p += "\x8a\x08";
            for (int i = 0; i < 8; ++i) p += char((uint64_t(v) >> (8 * i)) & 0xff);
        }
    };
    auto tuple = [&](const std::vector<int64_t> & v) {
        p += '(';
        for (int64_t x : v) num(x);
        p += 't';
    };
    p += "ccollections\nOrderedDict\n)R(";
    for (const torch_bin_tensor & t : ts) {
        int64_t numel = t.storage_numel;
        for (const auto & s : storage_bytes)
            if (numel < 0 && s.first == t.storage_key) numel = int64_t(s.second) / torch_elem_size(t.dtype);
        std::vector<int64_t> stride = t.stride;
        if (stride.empty()) {
            stride.assign(t.shape.size(), 1);
            for (size_t k = t.shape.size(); k-- > 1;) stride[k - 1] = stride[k] * t.shape[k];
        }
        str(t.name);
        p += "ctorch._utils\n_rebuild_tensor_v2\n((";
        str("storage");
        p += std::string("ctorch\n") + torch_storage_class(t.dtype) + "\n";
        str(t.storage_key);
        str("cpu");
        num(numel);
        p += "tQ";
        num(t.offset);
        tuple(t.shape);
        tuple(stride);
        p += "\x89" "ccollections\nOrderedDict\n)Rt" "R";
    }
    p += "u.";
    return p;
}

class torch_bin_writer {
  public:
    torch_bin_writer(const std::string & path, const std::string & archive, bool zip64 = false)
        : f_(path, std::ios::binary | std::ios::trunc), path_(path), archive_(archive), zip64_(zip64) {
        if (!f_) throw std::runtime_error("cannot create " + path);
    }

    void storage(const std::string & key, const std::string & bytes) {
        storages_.push_back({key, bytes.size()});
        member("data/" + key, bytes);
    }
    void tensor(const torch_bin_tensor & t) { tensors_.push_back(t); }

    // `pickle`: data.pkl as given instead of the one the tensors make (malformed files for the fuzz test).
    void finish(const std::string & pickle = "") {
        member("data.pkl", pickle.empty() ? torch_state_pickle(tensors_, storages_) : pickle);
        member("byteorder", "little");
        member("version", "3\n");
        const uint64_t cd = pos_;
        for (const entry & e : entries_) central(e);
        const uint64_t cd_size = pos_ - cd;
        const bool     wide = zip64_ || cd > 0xfffffffeull || entries_.size() >= 0xffff;
        if (wide) {
            const uint64_t z = pos_;
            u32(0x06064b50u), u64(44), u16(45), u16(45), u32(0), u32(0);
            u64(entries_.size()), u64(entries_.size()), u64(cd_size), u64(cd);
            u32(0x07064b50u), u32(0), u64(z), u32(1);
        }
        const uint32_t n16 = wide ? 0xffffu : uint32_t(entries_.size());
        u32(0x06054b50u), u16(0), u16(0), u16(n16), u16(n16);
        u32(wide ? 0xffffffffu : uint32_t(cd_size)), u32(wide ? 0xffffffffu : uint32_t(cd)), u16(0);
        f_.flush();
        if (!f_) throw std::runtime_error("cannot write " + path_);
    }

  private:
    struct entry {
        std::string name;
        uint64_t    offset, size;
        uint32_t    crc;
    };

    void raw(const void * d, size_t n) { f_.write((const char *) d, std::streamsize(n)), pos_ += n; }
    void u16(uint32_t v) { uint8_t b[2] = {uint8_t(v), uint8_t(v >> 8)}; raw(b, 2); }
    void u32(uint32_t v) { u16(v & 0xffff), u16(v >> 16); }
    void u64(uint64_t v) { u32(uint32_t(v)), u32(uint32_t(v >> 32)); }

    // Local header padded (with an extra field, as PyTorch does) so the data starts at a multiple of 64.
    void member(const std::string & rel, const std::string & bytes) {
        const std::string name = archive_ + "/" + rel;
        const bool        wide = zip64_ || pos_ + bytes.size() > 0xfffffffeull;
        entries_.push_back({name, pos_, bytes.size(), crc32_of(bytes)});
        const uint64_t base = pos_ + 30 + name.size() + 4 + (wide ? 20 : 0);
        const uint32_t pad = uint32_t((64 - base % 64) % 64);
        u32(0x04034b50u), u16(wide ? 45 : 20), u16(0), u16(0), u16(0), u16(0);
        u32(entries_.back().crc), u32(wide ? 0xffffffffu : uint32_t(bytes.size()));
        u32(wide ? 0xffffffffu : uint32_t(bytes.size()));
        u16(uint32_t(name.size())), u16(4 + (wide ? 20 : 0) + pad);
        raw(name.data(), name.size());
        if (wide) u16(1), u16(16), u64(bytes.size()), u64(bytes.size());
        u16(0x4246), u16(pad);  // "FB" padding field, as PyTorch names it
        raw(std::string(pad, 'Z').data(), pad);
        raw(bytes.data(), bytes.size());
    }

    void central(const entry & e) {
        const bool wide = zip64_ || e.offset > 0xfffffffeull || e.size > 0xfffffffeull;
        u32(0x02014b50u), u16(wide ? 45 : 20), u16(wide ? 45 : 20), u16(0), u16(0), u16(0), u16(0);
        u32(e.crc), u32(wide ? 0xffffffffu : uint32_t(e.size)), u32(wide ? 0xffffffffu : uint32_t(e.size));
        u16(uint32_t(e.name.size())), u16(wide ? 28 : 0), u16(0), u16(0), u16(0), u32(0);
        u32(wide ? 0xffffffffu : uint32_t(e.offset));
        raw(e.name.data(), e.name.size());
        if (wide) u16(1), u16(24), u64(e.size), u64(e.size), u64(e.offset);
    }

    std::ofstream                                  f_;
    std::string                                    path_, archive_;
    bool                                           zip64_;
    uint64_t                                       pos_ = 0;
    std::vector<entry>                             entries_;
    std::vector<torch_bin_tensor>                  tensors_;
    std::vector<std::pair<std::string, uint64_t>>  storages_;
};

}  // namespace minicpm_test
