// The CPU backend: host memory, a thread pool, and either the reference ops or the fast ops with one kernel
// family (the best for this CPU, or one forced by name for tests and comparisons).
#include "core/backend.h"
#include "core/status.h"
#include "core/threadpool.h"
#include "cpu/ops-fast.h"
#include "cpu/ops-ref.h"
#include "cpu/ops-sparse.h"
#include "cpu/qmatmul.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace minicpm {

namespace {

const char * usage_name(buffer_usage u) {
    switch (u) {
        case buffer_usage::weights: return "weights";
        case buffer_usage::kv: return "KV cache";
        case buffer_usage::compute: return "activations";
    }
    return "buffer";
}

class cpu_backend final : public backend {
  public:
    cpu_backend(const backend_options & o, const cpu_kernel_table * kt)
        : pool_(o.n_threads > 0 ? o.n_threads : default_thread_count()), kt_(kt) {
        name_ = kt_ ? std::string("cpu ") + kt_->name : "cpu-reference";
    }

    backend_kind  kind() const override { return backend_kind::cpu; }
    const char *  name() const override { return name_.c_str(); }
    const char *  features() const override { return kt_ ? kt_->features : ""; }
    int           n_threads() const override { return pool_.size(); }
    bool          host_memory() const override { return true; }
    thread_pool * host_pool() override { return &pool_; }

    buffer alloc(size_t bytes, buffer_usage usage) override {
        buffer b;
        b.usage = usage;
        if (bytes == 0) return b;
        // calloc: the OS hands out zero pages lazily, so a pool sized for the worst case costs only what is used.
        b.data = std::calloc(bytes, 1);
        if (!b.data)
            fail(MINICPM_STATUS_OUT_OF_MEMORY, std::string("cpu backend: cannot allocate ") + std::to_string(bytes) +
                                                   " bytes for " + usage_name(usage));
        b.size = bytes;
        return b;
    }
    void release(buffer & b) override {
        if (b.owned) std::free(b.data);
        b = buffer{};
    }
    buffer import_weights(const void * host, size_t bytes) override {
        buffer b;
        b.data = const_cast<void *>(host);  // read only: the mapping is used in place
        b.size = bytes;
        b.usage = buffer_usage::weights;
        b.owned = false;
        return b;
    }
    buffer prepare_weights(const tensor_desc & w) override {
        buffer b;
        if (!kt_ || !w.quantized() || !qmatmul_supported(w) || qmatmul_for(*kt_).packed == nullptr) return b;
        const size_t bytes = qpack_bytes(w);
        b.data = std::aligned_alloc(64, bytes);  // multiple of 64 (qpack.h); released by free()
        if (!b.data)
            fail(MINICPM_STATUS_OUT_OF_MEMORY,
                 "cpu backend: cannot allocate " + std::to_string(bytes) + " bytes for packed weights");
        b.size = bytes;
        b.usage = buffer_usage::weights;
        qpack(w, (uint8_t *) b.data);
        return b;
    }
    void upload(const buffer & dst, size_t off, const void * src, size_t n) override {
        check(dst, off, n, "upload");
        if (n) std::memcpy((uint8_t *) dst.data + off, src, n);
    }
    void download(void * dst, const buffer & src, size_t off, size_t n) override {
        check(src, off, n, "download");
        if (n) std::memcpy(dst, (const uint8_t *) src.data + off, n);
    }
    void copy(const buffer & dst, size_t doff, const buffer & src, size_t soff, size_t n) override {
        check(dst, doff, n, "copy");
        check(src, soff, n, "copy");
        if (n) std::memmove((uint8_t *) dst.data + doff, (const uint8_t *) src.data + soff, n);
    }
    void fill_zero(const buffer & dst, size_t off, size_t n) override {
        check(dst, off, n, "fill_zero");
        if (n) std::memset((uint8_t *) dst.data + off, 0, n);
    }
    void synchronize() override {}  // ops run synchronously on the calling thread and the pool

    void matmul(float * y, const float * x, const tensor_desc & w, int64_t T) override {
        kt_ ? fast_matmul(*kt_, pool_, y, x, w, T) : ref_matmul(y, x, w, T);
    }
    void rms_norm(float * y, const float * x, const tensor_desc & g, int64_t T, float eps) override {
        kt_ ? fast_rms_norm(*kt_, pool_, y, x, g, T, eps) : ref_rms_norm(y, x, g, T, eps);
    }
    void embed(float * out, const int32_t * tokens, const tensor_desc & e, int64_t T, float scale) override {
        kt_ ? fast_embed(pool_, out, tokens, e, T, scale) : ref_embed(out, tokens, e, T, scale);
    }
    void rope(float * x, const int32_t * pos, const float * cs, int64_t T, int32_t nh, int32_t hd) override {
        kt_ ? fast_rope(pool_, x, pos, cs, T, nh, hd) : ref_rope(x, pos, cs, T, nh, hd);
    }
    void kv_store(const kv_layer & kv, const float * k, const float * v, const kv_segment * segs,
                  int32_t n_segs) override {
        kt_ ? fast_kv_store(pool_, kv, k, v, segs, n_segs) : ref_kv_store(kv, k, v, segs, n_segs);
    }
    void attention(float * out, const float * q, const kv_layer & kv, const kv_segment * segs, int32_t n_segs,
                   int32_t n_head, float scale) override {
        kt_ ? fast_attention(*kt_, pool_, out, q, kv, segs, n_segs, n_head, scale)
            : ref_attention(out, q, kv, segs, n_segs, n_head, scale);
    }
    void kv_compress(const kv_compressed & cc, const kv_layer & kv, const kv_segment * segs, const int32_t * from,
                     int32_t n_segs) override {
        kt_ ? fast_kv_compress(pool_, cc, kv, segs, from, n_segs) : ref_kv_compress(cc, kv, segs, from, n_segs);
    }
    void sparse_attention(float * out, const float * q, const kv_layer & kv, const kv_compressed & cc,
                          const kv_segment * segs, int32_t n_segs, int32_t n_head, float scale,
                          const sparse_attn_params & sp, uint64_t * sel, int32_t sel_words) override {
        kt_ ? fast_sparse_attention(*kt_, pool_, out, q, kv, cc, segs, n_segs, n_head, scale, sp, sel, sel_words)
            : ref_sparse_attention(out, q, kv, cc, segs, n_segs, n_head, scale, sp, sel, sel_words);
    }
    void silu_mul(float * out, const float * gate, const float * up, int64_t n) override {
        kt_ ? fast_silu_mul(*kt_, pool_, out, gate, up, n) : ref_silu_mul(out, gate, up, n);
    }
    void add_scaled(float * x, const float * a, float scale, int64_t n) override {
        kt_ ? fast_add_scaled(*kt_, pool_, x, a, scale, n) : ref_add_scaled(x, a, scale, n);
    }
    void div_scalar(float * x, float d, int64_t n) override {
        kt_ ? fast_div_scalar(pool_, x, d, n) : ref_div_scalar(x, d, n);
    }
    void get_rows(float * dst, const float * src, const int32_t * rows, int64_t R, int64_t H) override {
        kt_ ? fast_get_rows(pool_, dst, src, rows, R, H) : ref_get_rows(dst, src, rows, R, H);
    }

  private:
    static void check(const buffer & b, size_t off, size_t n, const char * what) {
        if (off > b.size || n > b.size - off)
            fail(MINICPM_STATUS_INTERNAL, std::string("cpu backend: ") + what + " of " + std::to_string(n) +
                                              " bytes at " + std::to_string(off) + " outside a buffer of " +
                                              std::to_string(b.size));
    }

    thread_pool              pool_;
    const cpu_kernel_table * kt_;  // nullptr: reference ops
    std::string              name_;
};

}  // namespace

std::unique_ptr<backend> make_cpu_backend(const backend_options & o) {
    const cpu_kernel_table * kt = nullptr;
    if (!o.reference) {
        const char * forced = o.kernels;
        if (forced == nullptr || *forced == '\0') forced = std::getenv("MINICPM_KERNELS");
        if (forced != nullptr && *forced != '\0') {
            kt = cpu_kernel_by_name(forced);
            if (kt == nullptr) {
                const char * names[8];
                const int    n = cpu_kernel_family_names(names, 8);
                std::string  list;
                for (int i = 0; i < n && i < 8; ++i) list += std::string(i ? ", " : "") + names[i];
                fail(MINICPM_STATUS_INVALID_ARGUMENT, std::string("CPU kernel family '") + forced +
                                                          "' is not available on this machine (available: " + list +
                                                          ")");
            }
        } else {
            kt = &cpu_kernels();
        }
    }
    return std::make_unique<cpu_backend>(o, kt);
}

}  // namespace minicpm
