// safetensors: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, then
// the data section. Everything in the header is untrusted: lengths are bounded by the file, products are
// overflow-checked and every byte range must lie inside the data section without overlapping another.
#include "model/safetensors.h"

#include "core/json.h"
#include "core/status.h"
#include "model/weights.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace minicpm {

namespace {

constexpr uint64_t k_max_header_bytes = 100000000;  // the limit the safetensors library itself enforces
constexpr size_t   k_max_rank = 8;

[[noreturn]] void io_error(const std::string & path, const std::string & what, int err) {
    fail(MINICPM_STATUS_IO, path + ": " + what + ": " + std::strerror(err));
}

}  // namespace

mapped_file::mapped_file(const std::string & path, bool use_mmap) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) io_error(path, "cannot open", errno);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        io_error(path, "cannot stat", err);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail(MINICPM_STATUS_IO, path + ": not a regular file");
    }
    size_ = uint64_t(st.st_size);
    if (size_ == 0) {
        ::close(fd);
        return;  // nothing to map; the header parser reports the file as too small
    }
    if (use_mmap) {
        void * p = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_PRIVATE, fd, 0);
        const int err = errno;
        ::close(fd);
        if (p == MAP_FAILED) io_error(path, "cannot mmap " + std::to_string(size_) + " bytes", err);
        data_ = (uint8_t *) p;
        mapped_ = true;
        return;
    }
    // 64-byte alignment keeps every tensor as aligned as with mmap (the header is padded to 8 bytes).
    data_ = (uint8_t *) std::aligned_alloc(64, size_t((size_ + 63) / 64 * 64));
    if (data_ == nullptr) {
        ::close(fd);
        fail(MINICPM_STATUS_OUT_OF_MEMORY, path + ": cannot allocate " + std::to_string(size_) + " bytes");
    }
    uint64_t done = 0;
    while (done < size_) {
        const ssize_t n = ::pread(fd, data_ + done, size_t(std::min<uint64_t>(size_ - done, 1u << 30)), off_t(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = n < 0 ? errno : EIO;
            ::close(fd);
            std::free(data_);
            data_ = nullptr;
            io_error(path, "read failed at byte " + std::to_string(done), err);
        }
        done += uint64_t(n);
    }
    ::close(fd);
}

mapped_file::~mapped_file() {
    if (data_ == nullptr) return;
    if (mapped_) ::munmap(data_, size_t(size_));
    else std::free(data_);
}

void mapped_file::drop_pages(const void * p, size_t n) const {
    const uintptr_t a = uintptr_t(p), lo = uintptr_t(data_), hi = lo + size_t(size_);
    if (!mapped_ || a < lo || a + n > hi) return;
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t first = (a + page - 1) / page * page, last = (a + n) / page * page;  // whole pages inside
    // A private read-only file mapping never written: dropped pages refault from the file unchanged. A failure
    // only leaves them resident.
    if (last > first) (void) ::madvise((void *) first, last - first, MADV_DONTNEED);
}

uint64_t safetensors_dtype_size(const std::string & tag) {
    static const struct {
        const char * tag;
        uint64_t     size;
    } table[] = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
        {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
    };
    for (const auto & e : table) {
        if (tag == e.tag) return e.size;
    }
    return 0;
}

safetensors_header parse_safetensors_header(const uint8_t * data, uint64_t file_size, const std::string & source) {
    const auto bad = [&](const std::string & what) { fail(MINICPM_STATUS_BAD_MODEL, source + ": " + what); };
    if (file_size < 8) {
        bad("file of " + std::to_string(file_size) + " bytes is too small for a safetensors header (8-byte length)");
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
    if (n > file_size - 8) {
        bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(file_size) +
            " bytes)");
    }
    if (n > k_max_header_bytes) {
        bad("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(k_max_header_bytes));
    }
    json_limits limits;
    limits.max_bytes = k_max_header_bytes;
    limits.max_depth = 8;  // the format nests three levels; anything deeper is garbage
    const json_value root = json_parse((const char *) data + 8, size_t(n), source + " (header)", limits);
    if (!root.is_object()) bad("the header must be a JSON object");

    safetensors_header h;
    h.data_offset = 8 + n;
    const uint64_t data_size = file_size - h.data_offset;
    for (const auto & m : root.members) {
        if (m.first == "__metadata__") continue;  // free-form strings; nothing we need
        const std::string where = "tensor '" + m.first + "'";
        const json_value & t = m.second;
        if (!t.is_object()) bad(where + " must be an object");
        const json_value * dt = t.find("dtype");
        const json_value * shape = t.find("shape");
        const json_value * offs = t.find("data_offsets");
        if (dt == nullptr || !dt->is_string()) bad(where + " has no string 'dtype'");
        if (shape == nullptr || !shape->is_array()) bad(where + " has no array 'shape'");
        if (offs == nullptr || !offs->is_array() || offs->items.size() != 2) {
            bad(where + " has no 'data_offsets' pair [begin, end]");
        }

        safetensors_entry e;
        e.name = m.first;
        e.dtype = dt->string;
        const uint64_t esize = safetensors_dtype_size(e.dtype);
        if (esize == 0) {
            fail(MINICPM_STATUS_UNSUPPORTED, source + ": " + where + " has unknown dtype '" + e.dtype + "'");
        }
        if (shape->items.size() > k_max_rank) bad(where + " has rank " + std::to_string(shape->items.size()));
        uint64_t numel = 1;
        bool     overflow = false;
        for (const json_value & d : shape->items) {
            if (!d.is_number() || !d.is_int || d.integer < 0) bad(where + " has a shape entry that is not a size");
            e.shape.push_back(d.integer);
            overflow = overflow || __builtin_mul_overflow(numel, uint64_t(d.integer), &numel);
        }
        for (int i = 0; i < 2; i++) {
            const json_value & o = offs->items[size_t(i)];
            if (!o.is_number() || !o.is_int || o.integer < 0) bad(where + " has a data offset that is not a size");
        }
        e.begin = uint64_t(offs->items[0].integer);
        e.end = uint64_t(offs->items[1].integer);
        if (e.begin > e.end || e.end > data_size) {
            bad(where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                "] outside the data section of " + std::to_string(data_size) + " bytes");
        }
        uint64_t nbytes = 0;
        overflow = overflow || __builtin_mul_overflow(numel, esize, &nbytes);
        if (overflow || nbytes != e.end - e.begin) {
            bad(where + " holds " + std::to_string(e.end - e.begin) + " bytes, but its shape and dtype " + e.dtype +
                " need " + (overflow ? std::string("more than 2^64") : std::to_string(nbytes)));
        }
        h.entries.push_back(std::move(e));
    }

    // Overlapping tensors would alias each other; real files lay them out back to back.
    std::vector<const safetensors_entry *> sorted;
    for (const safetensors_entry & e : h.entries) sorted.push_back(&e);
    std::sort(sorted.begin(), sorted.end(), [](const safetensors_entry * a, const safetensors_entry * b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    for (size_t i = 1; i < sorted.size(); i++) {
        if (sorted[i]->begin < sorted[i - 1]->end) {
            bad("tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name + "' overlap");
        }
    }
    return h;
}

}  // namespace minicpm
