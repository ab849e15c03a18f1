// A small strict JSON parser (RFC 8259) for config.json, index files and safetensors headers. The headers are
// untrusted input, so the parser bounds the input size, the nesting depth and the number of values, validates
// UTF-8, rejects duplicate keys, and reports every error with its byte offset. Hand-written so the library
// needs nothing but a C++ compiler.
#pragma once

#include "minicpm.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace minicpm {

enum class json_type : uint8_t { null, boolean, number, string, array, object };

struct json_value {
    json_type   type = json_type::null;
    bool        boolean = false;
    double      number = 0.0;
    bool        is_int = false;  // the number is integral and fits int64 (exact even beyond 2^53)
    int64_t     integer = 0;     // valid when is_int
    std::string string;
    std::vector<json_value>                          items;    // array elements
    std::vector<std::pair<std::string, json_value>> members;  // object members in file order, keys unique

    // The member named key, or nullptr when absent (or when this is not an object).
    const json_value * find(const std::string & key) const;

    bool is_null() const { return type == json_type::null; }
    bool is_bool() const { return type == json_type::boolean; }
    bool is_number() const { return type == json_type::number; }
    bool is_string() const { return type == json_type::string; }
    bool is_array() const { return type == json_type::array; }
    bool is_object() const { return type == json_type::object; }
};

const char * json_type_name(json_type t);

struct json_limits {
    size_t max_bytes = size_t(100) << 20;   // input size
    int    max_depth = 64;                  // nested arrays / objects
    size_t max_values = size_t(1) << 20;    // values in the whole document (bounds memory on hostile input)
};

// Parses text[0, n) as one JSON document (surrounding whitespace allowed). Throws minicpm::error(status,
// "<source>: invalid JSON at byte <offset>: <what>").
json_value json_parse(const char * text, size_t n, const std::string & source, const json_limits & limits = {},
                      int32_t status = MINICPM_STATUS_BAD_MODEL);

}  // namespace minicpm
