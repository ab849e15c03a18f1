// A whole file made readable in memory: mmap'd read-only, or read into an owned 64-byte aligned buffer.
// Used by load_model_files (weights.cpp); parse_safetensors_header is declared in weights.h.
#pragma once

#include <cstdint>
#include <string>

namespace minicpm {

class mapped_file {
  public:
    // Throws minicpm::error(MINICPM_STATUS_IO) naming the path when the file cannot be opened, mapped or read.
    mapped_file(const std::string & path, bool use_mmap);
    ~mapped_file();
    mapped_file(const mapped_file &) = delete;
    mapped_file & operator=(const mapped_file &) = delete;

    const uint8_t *     data() const { return data_; }
    uint64_t            size() const { return size_; }
    const std::string & path() const { return path_; }
    // Gives back the whole pages inside [p, p + n) when the file is mapped (read only, so they read back from
    // the file if touched again); a no-op for a file read into memory or a range outside it.
    void drop_pages(const void * p, size_t n) const;

  private:
    std::string path_;
    uint8_t *   data_ = nullptr;
    uint64_t    size_ = 0;
    bool        mapped_ = false;
};

// Bytes per element for a safetensors dtype tag ("BF16" -> 2), or 0 for a tag the format does not define.
uint64_t safetensors_dtype_size(const std::string & tag);

}  // namespace minicpm
