// The exception firewall every exported function goes through: it turns minicpm::error, std::bad_alloc and
// anything else into a status code and records the message as the calling thread's last error.
#pragma once

#include "core/status.h"

#include <new>
#include <string>

namespace minicpm {

void set_last_error(const std::string & message);
void clear_last_error();
const std::string & last_error_text();  // the calling thread's message ("" when none)

template <typename F> int32_t guarded(F && fn) {
    try {
        clear_last_error();
        return fn();
    } catch (const error & e) {
        set_last_error(e.what());
        return e.status();
    } catch (const std::bad_alloc &) {
        set_last_error("out of memory");
        return MINICPM_STATUS_OUT_OF_MEMORY;
    } catch (const std::exception & e) {
        set_last_error(std::string("internal error: ") + e.what());
        return MINICPM_STATUS_INTERNAL;
    } catch (...) {
        set_last_error("internal error: unknown exception");
        return MINICPM_STATUS_INTERNAL;
    }
}

// Checks a params struct's size field against the library's sizeof.
#define MINICPM_CHECK_PARAMS(p, type)                                                                         \
    do {                                                                                                      \
        if ((p) != nullptr && (p)->size != sizeof(type))                                                      \
            ::minicpm::fail(MINICPM_STATUS_ABI_MISMATCH, std::string(#type " size mismatch: caller passed ") + \
                                                             std::to_string((p)->size) + ", library has " +   \
                                                             std::to_string(sizeof(type)));                   \
    } while (0)

}  // namespace minicpm
