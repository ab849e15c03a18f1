// The zip container of torch.save files (pytorch_model.bin, freq_N.pt): the central directory, zip64 included,
// read in place, and raw DEFLATE for members that are compressed. Weights stay where they are in the mapping.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace minicpm {

struct zip_member {
    std::string name;
    uint32_t    method = 0;       // 0 stored, 8 deflate
    uint64_t    data_offset = 0;  // first byte of the (compressed) data in the archive
    uint64_t    compressed_size = 0;
    uint64_t    size = 0;         // uncompressed
};

// Lists the members of the archive data[0, n), checking that each one's data lies inside it. Throws
// minicpm::error(_INVALID_ARGUMENT) prefixed with `what` for a missing or malformed directory or local header.
std::vector<zip_member> read_zip_directory(const uint8_t * data, uint64_t n, const std::string & what);

// A member's bytes: copied when stored, inflated when deflated; throws on any other method or a size mismatch.
std::vector<uint8_t> zip_member_bytes(const uint8_t * data, const zip_member & m, const std::string & what);

// Raw DEFLATE (RFC 1951) into out; throws _INVALID_ARGUMENT on a malformed stream.
void inflate_raw(const uint8_t * in, size_t n, std::vector<uint8_t> & out);

}  // namespace minicpm
