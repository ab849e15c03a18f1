// FR-Spec vocabularies (ENGINE_REFERENCE 4.2): a list of token ids by descending corpus frequency, of which the
// draft's LM head scores only the first N. Read from the published freq_N.pt (torch.save: a zip archive, its
// members stored or deflated, holding archive/data.pkl: a pickled Python list of ints, or a 1-D integer tensor
// whose storage is archive/data/<key>) or from a plain little-endian int32 file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace minicpm {

// Parses the bytes of either format. Throws minicpm::error(_INVALID_ARGUMENT) naming what is wrong (not a zip
// nor a multiple of 4 bytes, no data.pkl, an unsupported pickle opcode, a tensor that is not 1-D integers...).
std::vector<int32_t> parse_token_list(const uint8_t * data, size_t n, const std::string & what);

// Reads a file (throws _IO when it cannot be read) and checks each id against n_vocab (> 0).
std::vector<int32_t> load_token_list(const std::string & path, int32_t n_vocab);

}  // namespace minicpm
