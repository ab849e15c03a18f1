#include "model/token-list.h"

#include "core/status.h"
#include "model/torch-pickle.h"

#include <cstring>
#include <fstream>
#include <iterator>

namespace minicpm {

static void bad(const std::string & what, const std::string & msg) {
    fail(MINICPM_STATUS_INVALID_ARGUMENT, what + ": " + msg);
}

static uint32_t rd32(const uint8_t * p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

static void push_id(std::vector<int32_t> & ids, int64_t x, const std::string & what) {
    if (x < INT32_MIN || x > INT32_MAX) bad(what, "token id " + std::to_string(x) + " out of int32");
    ids.push_back(int32_t(x));
}

std::vector<int32_t> parse_token_list(const uint8_t * data, size_t n, const std::string & what) {
    std::vector<int32_t> ids;
    if (n < 4 || rd32(data) != 0x04034b50u) {
        if (n % 4 != 0) bad(what, "neither a zip (torch.save) nor a list of int32 (" + std::to_string(n) + " bytes)");
        for (size_t j = 0; j < n; j += 4) ids.push_back(int32_t(rd32(data + j)));
        return ids;
    }
    const torch_archive a = read_torch_archive(data, n, what);
    const pickle_value & v = *a.root;
    if (v.kind == pickle_value::list || v.kind == pickle_value::tuple) {
        for (const pickle_ref & x : v.items) {
            if (x->kind != pickle_value::integer) bad(what, "the pickled list holds a non-integer");
            push_id(ids, x->i, what);
        }
    } else if (v.kind == pickle_value::tensor) {
        const torch_tensor_ref & t = v.t;
        if (t.shape.size() != 1) bad(what, "the tensor is not 1-D");
        if (!t.contiguous()) bad(what, "the tensor is not contiguous");
        const size_t width = t.dtype == "I64" ? 8 : t.dtype == "I32" ? 4 : 0;
        if (width == 0) bad(what, "tensor of " + t.dtype + " (expected a LongStorage or IntStorage)");
        const zip_member * m = a.find("data/" + t.storage_key);
        if (m == nullptr) bad(what, "tensor storage data/" + t.storage_key + " missing");
        const std::vector<uint8_t> raw = zip_member_bytes(data, *m, what);
        if (uint64_t(t.offset) > raw.size() / width || uint64_t(t.numel()) > raw.size() / width - uint64_t(t.offset))
            bad(what, "tensor larger than its storage");
        for (int64_t j = 0; j < t.numel(); ++j) {
            const uint8_t * q = raw.data() + size_t(t.offset + j) * width;
            push_id(ids, width == 8 ? int64_t(uint64_t(rd32(q)) | uint64_t(rd32(q + 4)) << 32) : int32_t(rd32(q)), what);
        }
    } else {
        bad(what, "data.pkl holds neither a list nor a tensor");
    }
    return ids;
}

std::vector<int32_t> load_token_list(const std::string & path, int32_t n_vocab) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(MINICPM_STATUS_IO, "token list: cannot open " + path);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<int32_t> ids = parse_token_list(bytes.data(), bytes.size(), path);
    if (ids.empty()) bad(path, "empty token list");
    std::vector<char> seen(size_t(n_vocab), 0);
    for (size_t j = 0; j < ids.size(); ++j) {
        if (ids[j] < 0 || ids[j] >= n_vocab)
            bad(path, "entry " + std::to_string(j) + " = " + std::to_string(ids[j]) + " is outside the vocabulary of " +
                          std::to_string(n_vocab));
        if (seen[size_t(ids[j])]++) bad(path, "token " + std::to_string(ids[j]) + " listed twice");
    }
    return ids;
}

}  // namespace minicpm
