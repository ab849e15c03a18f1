#include "model/zip-archive.h"

#include "core/status.h"

#include <cstring>

namespace minicpm {

static void bad(const std::string & what, const std::string & msg) {
    fail(MINICPM_STATUS_INVALID_ARGUMENT, what + ": " + msg);
}

static uint32_t rd16(const uint8_t * p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
static uint32_t rd32(const uint8_t * p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t * p) { return uint64_t(rd32(p)) | uint64_t(rd32(p + 4)) << 32; }

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
// the directory: end record (zip64 end record when a count or offset overflowed 32 bits), central entries (zip64
// extra field for the overflowed sizes and offset), local headers for where each member's data starts

static bool fits(uint64_t off, uint64_t len, uint64_t n) { return off <= n && len <= n - off; }

std::vector<zip_member> read_zip_directory(const uint8_t * d, uint64_t n, const std::string & what) {
    if (n < 22) bad(what, "zip: too short for an end of central directory (" + std::to_string(n) + " bytes)");
    uint64_t eocd = n;
    for (uint64_t i = n - 22;; --i) {  // the record ends with a comment of at most 65535 bytes
        if (rd32(d + i) == 0x06054b50u) {
            eocd = i;
            break;
        }
        if (i == 0 || n - i > 22 + 65535) break;
    }
    if (eocd == n) bad(what, "zip: no end of central directory (truncated?)");
    uint64_t entries = rd16(d + eocd + 10), cd_size = rd32(d + eocd + 12), cd_off = rd32(d + eocd + 16);
    if (entries == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        if (eocd < 20 || rd32(d + eocd - 20) != 0x07064b50u) bad(what, "zip64: no end of central directory locator");
        const uint64_t z = rd64(d + eocd - 20 + 8);
        if (!fits(z, 56, n) || rd32(d + z) != 0x06064b50u) bad(what, "zip64: bad end of central directory record");
        entries = rd64(d + z + 32), cd_size = rd64(d + z + 40), cd_off = rd64(d + z + 48);
    }
    if (!fits(cd_off, cd_size, n)) bad(what, "zip: central directory past the end of the file");
    if (entries > cd_size / 46) bad(what, "zip: " + std::to_string(entries) + " entries cannot fit the central directory");
    std::vector<zip_member> out;
    out.reserve(size_t(entries));
    const uint64_t cd_end = cd_off + cd_size;
    uint64_t       p = cd_off;
    for (uint64_t e = 0; e < entries; ++e) {
        if (!fits(p, 46, cd_end) || rd32(d + p) != 0x02014b50u)
            bad(what, "zip: bad central directory entry " + std::to_string(e));
        zip_member m;
        m.method = rd16(d + p + 10);
        m.compressed_size = rd32(d + p + 20);
        m.size = rd32(d + p + 24);
        const uint32_t nlen = rd16(d + p + 28), xlen = rd16(d + p + 30), clen = rd16(d + p + 32);
        uint64_t       loff = rd32(d + p + 42);
        if (!fits(p + 46, uint64_t(nlen) + xlen + clen, cd_end)) bad(what, "zip: central directory entry past its end");
        m.name.assign(reinterpret_cast<const char *>(d + p + 46), nlen);
        // zip64 extra field (id 1): the 64-bit values, in this order, of exactly the fields that read 0xffffffff
        uint64_t * wide[3] = {&m.size, &m.compressed_size, &loff};
        bool       need[3] = {m.size == 0xffffffffu, m.compressed_size == 0xffffffffu, loff == 0xffffffffu};
        for (uint64_t x = p + 46 + nlen; x + 4 <= p + 46 + nlen + xlen;) {
            const uint32_t id = rd16(d + x), len = rd16(d + x + 2);
            if (x + 4 + len > p + 46 + nlen + xlen) bad(what, "zip: extra field of " + m.name + " past its end");
            if (id == 1) {
                uint64_t q = x + 4;
                for (int k = 0; k < 3; ++k) {
                    if (!need[k]) continue;
                    if (q + 8 > x + 4 + len) bad(what, "zip64: extra field of " + m.name + " too short");
                    *wide[k] = rd64(d + q);
                    q += 8;
                    need[k] = false;
                }
            }
            x += 4 + len;
        }
        if (need[0] || need[1] || need[2]) bad(what, "zip64: " + m.name + " has no zip64 extra field for its sizes");
        p += 46 + nlen + xlen + clen;
        if (!fits(loff, 30, n) || rd32(d + loff) != 0x04034b50u) bad(what, "zip: bad local header of " + m.name);
        m.data_offset = loff + 30 + rd16(d + loff + 26) + rd16(d + loff + 28);
        if (!fits(m.data_offset, m.compressed_size, n)) bad(what, "zip: data of " + m.name + " past the end of the file");
        out.push_back(std::move(m));
    }
    return out;
}

std::vector<uint8_t> zip_member_bytes(const uint8_t * d, const zip_member & m, const std::string & what) {
    std::vector<uint8_t> out;
    if (m.method == 0) {
        if (m.size != m.compressed_size) bad(what, "zip: stored member " + m.name + " has two sizes");
        out.assign(d + m.data_offset, d + m.data_offset + m.size);
    } else if (m.method == 8) {
        inflate_raw(d + m.data_offset, size_t(m.compressed_size), out);
    } else {
        bad(what, "zip: " + m.name + " uses compression method " + std::to_string(m.method));
    }
    if (out.size() != m.size) bad(what, "zip: " + m.name + " has the wrong size");
    return out;
}

}  // namespace minicpm
