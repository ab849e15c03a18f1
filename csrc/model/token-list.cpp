#include "model/token-list.h"

#include "core/status.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>

namespace minicpm {

static void bad(const std::string & what, const std::string & msg) {
    fail(MINICPM_STATUS_INVALID_ARGUMENT, what + ": " + msg);
}

static uint32_t rd16(const uint8_t * p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
static uint32_t rd32(const uint8_t * p) { return rd16(p) | rd16(p + 2) << 16; }

// ---------------------------------------------------------------------------------------------------------
// inflate (RFC 1951), after zlib's puff.c: canonical Huffman tables as (count per length, symbols by code).

namespace {
struct bit_reader {
    const uint8_t * in;
    size_t          n, pos = 0;
    uint32_t        buf = 0;
    int             cnt = 0;
    uint32_t bits(int need) {
        uint32_t v = buf;
        while (cnt < need) {
            if (pos >= n) fail(MINICPM_STATUS_INVALID_ARGUMENT, "deflate: stream ends early");
            v |= uint32_t(in[pos++]) << cnt;
            cnt += 8;
        }
        buf = v >> need;
        cnt -= need;
        return v & ((1u << need) - 1u);
    }
};

struct huffman {
    int16_t count[16];
    int16_t symbol[320];
    void build(const uint8_t * lengths, int n) {
        std::memset(count, 0, sizeof(count));
        for (int s = 0; s < n; ++s) count[lengths[s]]++;
        int16_t offs[16];
        offs[1] = 0;
        for (int l = 1; l < 15; ++l) offs[l + 1] = int16_t(offs[l] + count[l]);
        for (int s = 0; s < n; ++s)
            if (lengths[s] != 0) symbol[offs[lengths[s]]++] = int16_t(s);
    }
    int decode(bit_reader & br) const {
        int code = 0, first = 0, index = 0;
        for (int len = 1; len <= 15; ++len) {
            code |= int(br.bits(1));
            const int c = count[len];
            if (code - c < first) return symbol[index + (code - first)];
            index += c;
            first = (first + c) << 1;
            code <<= 1;
        }
        fail(MINICPM_STATUS_INVALID_ARGUMENT, "deflate: bad Huffman code");
    }
};
}  // namespace

void inflate_raw(const uint8_t * in, size_t n, std::vector<uint8_t> & out) {
    static const uint16_t lbase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                       31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t  lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const uint16_t dbase[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                       193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const uint8_t  dext[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    bit_reader br{in, n};
    huffman    lit, dist;
    for (;;) {
        const uint32_t last = br.bits(1), type = br.bits(2);
        if (type == 0) {
            br.buf = 0, br.cnt = 0;  // to a byte boundary
            if (br.pos + 4 > n) bad("deflate", "stored block header past the end");
            const uint32_t len = rd16(in + br.pos), nlen = rd16(in + br.pos + 2);
            br.pos += 4;
            if ((len ^ 0xffffu) != nlen || br.pos + len > n) bad("deflate", "bad stored block length");
            out.insert(out.end(), in + br.pos, in + br.pos + len);
            br.pos += len;
        } else if (type == 1 || type == 2) {
            uint8_t lengths[320];
            if (type == 1) {
                int s = 0;
                for (; s < 144; ++s) lengths[s] = 8;
                for (; s < 256; ++s) lengths[s] = 9;
                for (; s < 280; ++s) lengths[s] = 7;
                for (; s < 288; ++s) lengths[s] = 8;
                lit.build(lengths, 288);
                for (s = 0; s < 30; ++s) lengths[s] = 5;
                dist.build(lengths, 30);
            } else {
                const int nlen = int(br.bits(5)) + 257, ndist = int(br.bits(5)) + 1, ncode = int(br.bits(4)) + 4;
                static const uint8_t order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
                if (nlen > 286 || ndist > 30) bad("deflate", "bad code counts");
                std::memset(lengths, 0, sizeof(lengths));
                for (int i = 0; i < ncode; ++i) lengths[order[i]] = uint8_t(br.bits(3));
                huffman lencode;
                lencode.build(lengths, 19);
                int idx = 0;
                while (idx < nlen + ndist) {
                    int sym = lencode.decode(br);
                    if (sym < 16) {
                        lengths[idx++] = uint8_t(sym);
                        continue;
                    }
                    uint8_t len = 0;
                    int     rep;
                    if (sym == 16) {
                        if (idx == 0) bad("deflate", "repeat with no previous length");
                        len = lengths[idx - 1];
                        rep = 3 + int(br.bits(2));
                    } else if (sym == 17) {
                        rep = 3 + int(br.bits(3));
                    } else {
                        rep = 11 + int(br.bits(7));
                    }
                    if (idx + rep > nlen + ndist) bad("deflate", "too many code lengths");
                    while (rep--) lengths[idx++] = len;
                }
                lit.build(lengths, nlen);
                dist.build(lengths + nlen, ndist);
            }
            for (;;) {
                int sym = lit.decode(br);
                if (sym < 256) {
                    out.push_back(uint8_t(sym));
                } else if (sym == 256) {
                    break;
                } else {
                    sym -= 257;
                    if (sym >= 29) bad("deflate", "bad length symbol");
                    const size_t len = lbase[sym] + br.bits(lext[sym]);
                    const int    ds = dist.decode(br);
                    if (ds >= 30) bad("deflate", "bad distance symbol");
                    const size_t d = dbase[ds] + br.bits(dext[ds]);
                    if (d > out.size()) bad("deflate", "distance before the start");
                    for (size_t i = 0; i < len; ++i) out.push_back(out[out.size() - d]);
                }
            }
        } else {
            bad("deflate", "block type 3");
        }
        if (last) break;
    }
}

// ---------------------------------------------------------------------------------------------------------
// zip members (no zip64: a frequency list is far below 4 GiB)

static std::map<std::string, std::vector<uint8_t>> read_zip(const uint8_t * d, size_t n, const std::string & what) {
    size_t eocd = n;
    for (size_t i = n >= 22 ? n - 22 : 0; n >= 22; --i) {
        if (rd32(d + i) == 0x06054b50u) {
            eocd = i;
            break;
        }
        if (i == 0 || n - i > 22 + 65535) break;
    }
    if (eocd == n) bad(what, "zip: no end of central directory");
    const uint32_t entries = rd16(d + eocd + 10), cd_off = rd32(d + eocd + 16);
    std::map<std::string, std::vector<uint8_t>> files;
    size_t p = cd_off;
    for (uint32_t e = 0; e < entries; ++e) {
        if (p + 46 > n || rd32(d + p) != 0x02014b50u) bad(what, "zip: bad central directory entry");
        const uint32_t method = rd16(d + p + 10), csize = rd32(d + p + 20), usize = rd32(d + p + 24);
        const uint32_t nlen = rd16(d + p + 28), xlen = rd16(d + p + 30), clen = rd16(d + p + 32);
        const uint32_t loff = rd32(d + p + 42);
        if (p + 46 + nlen > n) bad(what, "zip: name past the end");
        const std::string name(reinterpret_cast<const char *>(d + p + 46), nlen);
        p += 46 + nlen + xlen + clen;
        if (csize == 0xffffffffu || loff == 0xffffffffu) bad(what, "zip64 members are not supported");
        if (size_t(loff) + 30 > n || rd32(d + loff) != 0x04034b50u) bad(what, "zip: bad local header of " + name);
        const size_t data = size_t(loff) + 30 + rd16(d + loff + 26) + rd16(d + loff + 28);
        if (data + csize > n) bad(what, "zip: " + name + " past the end");
        std::vector<uint8_t> & out = files[name];
        if (method == 0) {
            out.assign(d + data, d + data + csize);
        } else if (method == 8) {
            inflate_raw(d + data, csize, out);
        } else {
            bad(what, "zip: " + name + " uses compression method " + std::to_string(method));
        }
        if (out.size() != usize) bad(what, "zip: " + name + " has the wrong size");
    }
    return files;
}

// ---------------------------------------------------------------------------------------------------------
// the pickle subset torch.save writes (protocol 2): lists / tuples of ints, globals, persistent ids, REDUCE of
// torch._utils._rebuild_tensor_v2 and collections.OrderedDict

namespace {
struct pvalue;
using pref = std::shared_ptr<pvalue>;
struct pvalue {
    enum kind_t { none, integer, string, list, tuple, dict, global, storage, tensor, mark } kind = none;
    int64_t           i = 0;      // integer; tensor: storage offset
    std::string       s;          // string; global "module.name"; storage/tensor: key
    std::vector<pref> items;      // list, tuple; tensor: sizes as integers
    std::string       dtype;      // storage/tensor: storage class name
};
pref make(pvalue::kind_t k) {
    auto v = std::make_shared<pvalue>();
    v->kind = k;
    return v;
}
}  // namespace

static pref unpickle(const std::vector<uint8_t> & b, const std::string & what) {
    std::vector<pref>            st;
    std::map<uint32_t, pref>     memo;
    size_t                       p = 0;
    auto need = [&](size_t k) {
        if (p + k > b.size()) bad(what, "pickle ends early");
    };
    auto pop = [&]() {
        if (st.empty()) bad(what, "pickle stack underflow");
        pref v = st.back();
        st.pop_back();
        return v;
    };
    auto pop_mark = [&]() {
        std::vector<pref> items;
        while (!st.empty() && st.back()->kind != pvalue::mark) items.push_back(pop());
        if (st.empty()) bad(what, "pickle: no mark");
        st.pop_back();
        return std::vector<pref>(items.rbegin(), items.rend());
    };
    auto integer = [](int64_t x) {
        pref v = make(pvalue::integer);
        v->i = x;
        return v;
    };
    for (;;) {
        need(1);
        const uint8_t op = b[p++];
        switch (op) {
        case 0x80: need(1), ++p; break;         // PROTO
        case 0x95: need(8), p += 8; break;      // FRAME
        case ']': st.push_back(make(pvalue::list)); break;
        case ')': st.push_back(make(pvalue::tuple)); break;
        case '}': st.push_back(make(pvalue::dict)); break;
        case 'N': st.push_back(make(pvalue::none)); break;
        case 0x88: st.push_back(integer(1)); break;  // NEWTRUE
        case 0x89: st.push_back(integer(0)); break;  // NEWFALSE
        case '(': st.push_back(make(pvalue::mark)); break;
        case 'K': need(1), st.push_back(integer(b[p])), p += 1; break;
        case 'M': need(2), st.push_back(integer(rd16(&b[p]))), p += 2; break;
        case 'J': need(4), st.push_back(integer(int32_t(rd32(&b[p])))), p += 4; break;
        case 0x8a: {  // LONG1: little-endian two's complement
            need(1);
            const uint32_t k = b[p++];
            need(k);
            if (k > 8) bad(what, "pickle: integer wider than 64 bits");
            uint64_t x = 0;
            for (uint32_t j = 0; j < k; ++j) x |= uint64_t(b[p + j]) << (8 * j);
            if (k > 0 && k < 8 && (b[p + k - 1] & 0x80)) x |= ~uint64_t(0) << (8 * k);
            p += k;
            st.push_back(integer(int64_t(x)));
            break;
        }
        case 'G': need(8), p += 8, st.push_back(make(pvalue::none)); break;  // BINFLOAT: not needed
        case 0x8c: case 'X': {  // SHORT_BINUNICODE, BINUNICODE
            size_t k;
            if (op == 0x8c) need(1), k = b[p++];
            else need(4), k = rd32(&b[p]), p += 4;
            need(k);
            pref v = make(pvalue::string);
            v->s.assign(reinterpret_cast<const char *>(&b[p]), k);
            p += k;
            st.push_back(v);
            break;
        }
        case 'c': {  // GLOBAL "module\nname\n"
            pref v = make(pvalue::global);
            for (int part = 0; part < 2; ++part) {
                size_t e = p;
                while (e < b.size() && b[e] != '\n') ++e;
                if (e >= b.size()) bad(what, "pickle: unterminated GLOBAL");
                v->s += (part ? "." : "") + std::string(reinterpret_cast<const char *>(&b[p]), e - p);
                p = e + 1;
            }
            st.push_back(v);
            break;
        }
        case 0x93: {  // STACK_GLOBAL
            pref name = pop(), mod = pop();
            pref v = make(pvalue::global);
            v->s = mod->s + "." + name->s;
            st.push_back(v);
            break;
        }
        case 'q': need(1), memo[b[p]] = st.empty() ? nullptr : st.back(), p += 1; break;
        case 'r': need(4), memo[rd32(&b[p])] = st.empty() ? nullptr : st.back(), p += 4; break;
        case 0x94: memo[uint32_t(memo.size())] = st.empty() ? nullptr : st.back(); break;
        case 'h': case 'j': {
            uint32_t k;
            if (op == 'h') need(1), k = b[p++];
            else need(4), k = rd32(&b[p]), p += 4;
            auto it = memo.find(k);
            if (it == memo.end() || !it->second) bad(what, "pickle: bad memo reference");
            st.push_back(it->second);
            break;
        }
        case 'a': {
            pref v = pop();
            if (st.empty() || st.back()->kind != pvalue::list) bad(what, "pickle: APPEND to a non-list");
            st.back()->items.push_back(v);
            break;
        }
        case 'e': {
            std::vector<pref> items = pop_mark();
            if (st.empty() || st.back()->kind != pvalue::list) bad(what, "pickle: APPENDS to a non-list");
            st.back()->items.insert(st.back()->items.end(), items.begin(), items.end());
            break;
        }
        case 't': case 0x85: case 0x86: case 0x87: {
            pref v = make(pvalue::tuple);
            if (op == 't') {
                v->items = pop_mark();
            } else {
                const int k = op - 0x84;
                v->items.resize(size_t(k));
                for (int j = k - 1; j >= 0; --j) v->items[size_t(j)] = pop();
            }
            st.push_back(v);
            break;
        }
        case 's': pop(), pop(); break;   // SETITEM into a dict we do not keep
        case 'u': pop_mark(); break;     // SETITEMS
        case 'b': pop(); break;          // BUILD: state ignored
        case 'Q': {                      // BINPERSID: ('storage', StorageClass, key, location, numel)
            pref id = pop();
            if (id->kind != pvalue::tuple || id->items.size() < 3 || id->items[1]->kind != pvalue::global)
                bad(what, "pickle: unknown persistent id");
            pref v = make(pvalue::storage);
            v->dtype = id->items[1]->s;
            v->s = id->items[2]->s;
            st.push_back(v);
            break;
        }
        case 'R': {
            pref args = pop(), fn = pop();
            if (fn->kind != pvalue::global) bad(what, "pickle: REDUCE of a non-global");
            if (fn->s == "torch._utils._rebuild_tensor_v2") {
                if (args->items.size() < 3 || args->items[0]->kind != pvalue::storage) bad(what, "pickle: bad tensor");
                pref v = make(pvalue::tensor);
                v->s = args->items[0]->s;
                v->dtype = args->items[0]->dtype;
                v->i = args->items[1]->i;
                v->items = args->items[2]->items;
                st.push_back(v);
            } else if (fn->s == "collections.OrderedDict") {
                st.push_back(make(pvalue::dict));
            } else {
                bad(what, "pickle: unsupported callable " + fn->s);
            }
            break;
        }
        case '.': return pop();
        default: {
            char hex[8];
            std::snprintf(hex, sizeof(hex), "0x%02x", op);
            bad(what, std::string("pickle: unsupported opcode ") + hex + " at byte " + std::to_string(p - 1));
        }
        }
    }
}

std::vector<int32_t> parse_token_list(const uint8_t * data, size_t n, const std::string & what) {
    std::vector<int32_t> ids;
    if (n >= 4 && rd32(data) == 0x04034b50u) {
        const auto files = read_zip(data, n, what);
        const std::vector<uint8_t> * pkl = nullptr;
        std::string prefix;
        for (const auto & [name, bytes] : files) {
            if (name.size() >= 8 && name.compare(name.size() - 8, 8, "data.pkl") == 0) {
                pkl = &bytes;
                prefix = name.substr(0, name.size() - 8);
            }
        }
        if (!pkl) bad(what, "zip without a data.pkl (not a torch.save file)");
        const pref v = unpickle(*pkl, what);
        if (v->kind == pvalue::list || v->kind == pvalue::tuple) {
            for (const pref & x : v->items) {
                if (x->kind != pvalue::integer) bad(what, "the pickled list holds a non-integer");
                if (x->i < INT32_MIN || x->i > INT32_MAX) bad(what, "token id " + std::to_string(x->i) + " out of int32");
                ids.push_back(int32_t(x->i));
            }
        } else if (v->kind == pvalue::tensor) {
            if (v->items.size() != 1) bad(what, "the tensor is not 1-D");
            const int64_t numel = v->items[0]->i;
            const size_t  width = v->dtype == "torch.LongStorage" ? 8 : v->dtype == "torch.IntStorage" ? 4 : 0;
            if (width == 0) bad(what, "tensor storage " + v->dtype + " (expected LongStorage or IntStorage)");
            auto it = files.find(prefix + "data/" + v->s);
            if (it == files.end()) bad(what, "tensor storage data/" + v->s + " missing");
            const std::vector<uint8_t> & raw = it->second;
            if (numel < 0 || v->i < 0 || (size_t(v->i) + size_t(numel)) * width > raw.size())
                bad(what, "tensor larger than its storage");
            for (int64_t j = 0; j < numel; ++j) {
                const uint8_t * q = raw.data() + (size_t(v->i) + size_t(j)) * width;
                const int64_t   x = width == 8 ? int64_t(uint64_t(rd32(q)) | uint64_t(rd32(q + 4)) << 32) : int32_t(rd32(q));
                if (x < INT32_MIN || x > INT32_MAX) bad(what, "token id " + std::to_string(x) + " out of int32");
                ids.push_back(int32_t(x));
            }
        } else {
            bad(what, "data.pkl holds neither a list nor a tensor");
        }
    } else {
        if (n % 4 != 0) bad(what, "neither a zip (torch.save) nor a list of int32 (" + std::to_string(n) + " bytes)");
        for (size_t j = 0; j < n; j += 4) ids.push_back(int32_t(rd32(data + j)));
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
