// Internal error type: engine code throws minicpm::error; the API boundary (csrc/api) turns it into a
// status code plus the thread's last-error text. Nothing below the boundary calls exit() or abort().
#pragma once

#include "minicpm.h"

#include <stdexcept>
#include <string>

namespace minicpm {

class error : public std::runtime_error {
  public:
    error(int32_t status, const std::string & message) : std::runtime_error(message), status_(status) {}
    int32_t status() const { return status_; }

  private:
    int32_t status_;
};

[[noreturn]] inline void fail(int32_t status, const std::string & message) { throw error(status, message); }

}  // namespace minicpm
