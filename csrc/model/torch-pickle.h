// torch.save files read without Python: the pickle subset torch.save emits (protocol 2, and the few protocol 4
// opcodes of newer writers), interpreted, never executed. The only callables are collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 and _rebuild_parameter; the only persistent ids are storages
// ('storage', torch.<Type>Storage, key, location, numel), whose bytes are the zip member <archive>/data/<key>.
// Used for state dicts (pytorch_model.bin, mapped like safetensors) and FR-Spec token lists (freq_N.pt).
#pragma once

#include "model/weights.h"
#include "model/zip-archive.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace minicpm {

struct torch_tensor_ref {
    std::string          storage_key;     // zip member <archive>/data/<key>
    std::string          dtype;           // safetensors tag of the storage class ("BF16" for BFloat16Storage)
    int64_t              storage_numel = 0;
    int64_t              offset = 0;      // storage offset, in elements
    std::vector<int64_t> shape, stride;   // in elements
    int64_t numel() const;
    bool    contiguous() const;           // row-major with no gaps (strides of size-1 dimensions do not matter)
};

struct pickle_value;
using pickle_ref = std::shared_ptr<pickle_value>;
struct pickle_value {
    enum kind_t { none, integer, string, list, tuple, dict, global, storage, tensor, mark } kind = none;
    int64_t                                       i = 0;  // integer
    std::string                                   s;      // string; global "module.name"
    std::vector<pickle_ref>                       items;  // list, tuple
    std::vector<std::pair<pickle_ref, pickle_ref>> entries;  // dict, in insertion order
    torch_tensor_ref                              t;      // storage (key, dtype, numel) or tensor
    pickle_value() = default;
    pickle_value(const pickle_value &) = delete;
    pickle_value & operator=(const pickle_value &) = delete;
    ~pickle_value();  // without recursion: a hostile pickle may nest lists a million deep
};

// Interprets a data.pkl. Throws minicpm::error(_INVALID_ARGUMENT) prefixed with `what` on an unknown opcode or
// global, a malformed persistent id or tensor, a stack underflow or a pickle that ends early.
pickle_ref unpickle_torch(const uint8_t * data, size_t n, const std::string & what);

// A torch.save archive: its members, the unpickled data.pkl and the prefix "<archive>/" of its member names.
struct torch_archive {
    std::vector<zip_member> members;
    pickle_ref              root;
    std::string             prefix;
    const zip_member *      find(const std::string & name) const;
};
torch_archive read_torch_archive(const uint8_t * data, uint64_t n, const std::string & what);

// A state dict saved with torch.save (a dict or OrderedDict of name -> tensor) as safetensors entries with
// data_offset 0: each tensor's byte range in the file, inside its stored (uncompressed) storage member. Throws
// _BAD_MODEL naming the tensor for a non-contiguous tensor, a storage out of range or of two dtypes, a compressed
// storage, a big-endian archive; _INVALID_ARGUMENT for a malformed zip or pickle.
safetensors_header parse_torch_checkpoint(const uint8_t * data, uint64_t n, const std::string & path);

}  // namespace minicpm
