#include "api/boundary.h"

namespace minicpm {

// Per thread, so the engine thread and the caller never see each other's failures.
static thread_local std::string t_last_error;

void set_last_error(const std::string & message) { t_last_error = message; }

void clear_last_error() { t_last_error.clear(); }

const std::string & last_error_text() { return t_last_error; }

}  // namespace minicpm
