#include "core/json.h"

#include "core/status.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cmath>

namespace minicpm {

const json_value * json_value::find(const std::string & key) const {
    for (const auto & m : members) {
        if (m.first == key) return &m.second;
    }
    return nullptr;
}

const char * json_type_name(json_type t) {
    switch (t) {
        case json_type::null: return "null";
        case json_type::boolean: return "a boolean";
        case json_type::number: return "a number";
        case json_type::string: return "a string";
        case json_type::array: return "an array";
        case json_type::object: return "an object";
    }
    return "unknown";
}

namespace {

class parser {
  public:
    parser(const char * text, size_t n, const std::string & source, const json_limits & limits, int32_t status)
        : p_(text), n_(n), source_(source), limits_(limits), status_(status) {}

    json_value parse_document() {
        if (n_ > limits_.max_bytes) {
            fail(status_, source_ + ": JSON text of " + std::to_string(n_) + " bytes exceeds the limit of " +
                              std::to_string(limits_.max_bytes));
        }
        json_value v;
        skip_ws();
        parse_value(v, 0);
        skip_ws();
        if (pos_ != n_) error("unexpected data after the JSON value");
        return v;
    }

  private:
    const char *        p_;
    size_t              n_;
    size_t              pos_ = 0;
    size_t              n_values_ = 0;
    const std::string & source_;
    const json_limits & limits_;
    int32_t             status_;

    [[noreturn]] void error(const std::string & what) const {
        fail(status_, source_ + ": invalid JSON at byte " + std::to_string(pos_) + ": " + what);
    }

    void skip_ws() {
        while (pos_ < n_ && (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r')) pos_++;
    }

    void expect_literal(const char * lit) {
        for (size_t i = 0; lit[i] != '\0'; i++, pos_++) {
            if (pos_ >= n_ || p_[pos_] != lit[i]) error(std::string("invalid literal, expected '") + lit + "'");
        }
    }

    // Depth counts the arrays / objects enclosing v; recursion stops at limits_.max_depth.
    void parse_value(json_value & v, int depth) {
        if (++n_values_ > limits_.max_values) {
            error("more than " + std::to_string(limits_.max_values) + " values");
        }
        if (pos_ >= n_) error("unexpected end of input, expected a value");
        const char c = p_[pos_];
        if (c == '{' || c == '[') {
            if (depth >= limits_.max_depth) error("nesting deeper than " + std::to_string(limits_.max_depth));
            if (c == '{') parse_object(v, depth + 1);
            else parse_array(v, depth + 1);
        } else if (c == '"') {
            v.type = json_type::string;
            parse_string(v.string);
        } else if (c == 't') {
            expect_literal("true");
            v.type = json_type::boolean;
            v.boolean = true;
        } else if (c == 'f') {
            expect_literal("false");
            v.type = json_type::boolean;
        } else if (c == 'n') {
            expect_literal("null");
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            parse_number(v);
        } else {
            error(std::string("unexpected character ") + describe(c));
        }
    }

    static std::string describe(char c) {
        const unsigned char u = (unsigned char) c;
        if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
        char buf[8];
        std::snprintf(buf, sizeof(buf), "0x%02x", u);
        return buf;
    }

    void parse_object(json_value & v, int depth) {
        v.type = json_type::object;
        pos_++;  // '{'
        skip_ws();
        if (pos_ < n_ && p_[pos_] == '}') {
            pos_++;
            return;
        }
        for (;;) {
            skip_ws();
            if (pos_ >= n_ || p_[pos_] != '"') error("expected a string key");
            v.members.emplace_back();
            parse_string(v.members.back().first);
            skip_ws();
            if (pos_ >= n_ || p_[pos_] != ':') error("expected ':' after an object key");
            pos_++;
            skip_ws();
            parse_value(v.members.back().second, depth);
            skip_ws();
            if (pos_ < n_ && p_[pos_] == ',') {
                pos_++;
                continue;
            }
            if (pos_ < n_ && p_[pos_] == '}') {
                pos_++;
                break;
            }
            error("expected ',' or '}' in an object");
        }
        check_unique_keys(v);
    }

    // Sorting pointers keeps this O(n log n) on hostile headers with many keys.
    void check_unique_keys(const json_value & v) const {
        if (v.members.size() < 2) return;
        std::vector<const std::string *> keys;
        keys.reserve(v.members.size());
        for (const auto & m : v.members) keys.push_back(&m.first);
        std::sort(keys.begin(), keys.end(), [](const std::string * a, const std::string * b) { return *a < *b; });
        for (size_t i = 1; i < keys.size(); i++) {
            if (*keys[i] == *keys[i - 1]) {
                fail(status_, source_ + ": invalid JSON: duplicate key '" + *keys[i] + "' in the object ending at byte " +
                                  std::to_string(pos_));
            }
        }
    }

    void parse_array(json_value & v, int depth) {
        v.type = json_type::array;
        pos_++;  // '['
        skip_ws();
        if (pos_ < n_ && p_[pos_] == ']') {
            pos_++;
            return;
        }
        for (;;) {
            skip_ws();
            v.items.emplace_back();
            parse_value(v.items.back(), depth);
            skip_ws();
            if (pos_ < n_ && p_[pos_] == ',') {
                pos_++;
                continue;
            }
            if (pos_ < n_ && p_[pos_] == ']') {
                pos_++;
                break;
            }
            error("expected ',' or ']' in an array");
        }
    }

    uint32_t parse_hex4() {
        if (n_ - pos_ < 4) error("truncated \\u escape");
        uint32_t cp = 0;
        for (int i = 0; i < 4; i++, pos_++) {
            const char c = p_[pos_];
            cp <<= 4;
            if (c >= '0' && c <= '9') cp |= uint32_t(c - '0');
            else if (c >= 'a' && c <= 'f') cp |= uint32_t(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') cp |= uint32_t(c - 'A' + 10);
            else error("invalid hex digit in a \\u escape");
        }
        return cp;
    }

    static void append_utf8(std::string & out, uint32_t cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xc0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += char(0xe0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3f));
            out += char(0x80 | (cp & 0x3f));
        } else {
            out += char(0xf0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3f));
            out += char(0x80 | ((cp >> 6) & 0x3f));
            out += char(0x80 | (cp & 0x3f));
        }
    }

    // Length of the valid UTF-8 sequence starting at pos_ (lead byte >= 0x80), or 0 when invalid: no overlong
    // forms, no encoded surrogates, nothing above U+10FFFF.
    size_t utf8_length() const {
        const auto b = [&](size_t i) { return pos_ + i < n_ ? (unsigned char) p_[pos_ + i] : 0u; };
        const unsigned c0 = b(0);
        const auto cont = [&](size_t i) { return (b(i) & 0xc0u) == 0x80u; };
        if (c0 >= 0xc2 && c0 <= 0xdf) return cont(1) ? 2 : 0;
        if (c0 >= 0xe0 && c0 <= 0xef) {
            const unsigned c1 = b(1);
            if (!cont(1) || !cont(2)) return 0;
            if (c0 == 0xe0 && c1 < 0xa0) return 0;  // overlong
            if (c0 == 0xed && c1 >= 0xa0) return 0; // surrogate
            return 3;
        }
        if (c0 >= 0xf0 && c0 <= 0xf4) {
            const unsigned c1 = b(1);
            if (!cont(1) || !cont(2) || !cont(3)) return 0;
            if (c0 == 0xf0 && c1 < 0x90) return 0;  // overlong
            if (c0 == 0xf4 && c1 >= 0x90) return 0; // above U+10FFFF
            return 4;
        }
        return 0;
    }

    void parse_string(std::string & out) {
        pos_++;  // opening quote
        for (;;) {
            if (pos_ >= n_) error("unterminated string");
            const unsigned char c = (unsigned char) p_[pos_];
            if (c == '"') {
                pos_++;
                return;
            }
            if (c < 0x20) error("unescaped control character " + describe(char(c)) + " in a string");
            if (c >= 0x80) {
                const size_t len = utf8_length();
                if (len == 0) error("invalid UTF-8 in a string");
                out.append(p_ + pos_, len);
                pos_ += len;
                continue;
            }
            if (c != '\\') {
                out += char(c);
                pos_++;
                continue;
            }
            pos_++;
            if (pos_ >= n_) error("unterminated escape");
            const char e = p_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = parse_hex4();
                    if (cp >= 0xdc00 && cp <= 0xdfff) error("lone low surrogate in a \\u escape");
                    if (cp >= 0xd800 && cp <= 0xdbff) {
                        if (n_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u') {
                            error("high surrogate not followed by a \\u low surrogate");
                        }
                        pos_ += 2;
                        const uint32_t lo = parse_hex4();
                        if (lo < 0xdc00 || lo > 0xdfff) error("high surrogate not followed by a low surrogate");
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: pos_--; error("invalid escape " + describe(e));
            }
        }
    }

    // Grammar checked by hand (from_chars alone would accept "01", "1." or "+1"); the value then comes from
    // from_chars, which is exact and locale-independent.
    void parse_number(json_value & v) {
        const size_t start = pos_;
        const auto digit = [&]() { return pos_ < n_ && p_[pos_] >= '0' && p_[pos_] <= '9'; };
        bool integral = true;
        if (p_[pos_] == '-') pos_++;
        if (!digit()) error("expected a digit");
        if (p_[pos_] == '0') {
            pos_++;
            if (digit()) error("leading zero in a number");
        } else {
            while (digit()) pos_++;
        }
        if (pos_ < n_ && p_[pos_] == '.') {
            integral = false;
            pos_++;
            if (!digit()) error("expected a digit after '.'");
            while (digit()) pos_++;
        }
        if (pos_ < n_ && (p_[pos_] == 'e' || p_[pos_] == 'E')) {
            integral = false;
            pos_++;
            if (pos_ < n_ && (p_[pos_] == '+' || p_[pos_] == '-')) pos_++;
            if (!digit()) error("expected a digit in the exponent");
            while (digit()) pos_++;
        }
        v.type = json_type::number;
        const char * first = p_ + start;
        const char * last = p_ + pos_;
        const auto r = std::from_chars(first, last, v.number);
        if (r.ec != std::errc() || r.ptr != last || !std::isfinite(v.number)) {
            pos_ = start;
            error("number '" + std::string(first, size_t(last - first)) + "' is out of range");
        }
        if (integral) {
            v.is_int = std::from_chars(first, last, v.integer).ec == std::errc();
        } else if (v.number == std::floor(v.number) && std::fabs(v.number) < 9.2233720368547758e18) {
            v.is_int = true;
            v.integer = int64_t(v.number);
        }
    }
};

}  // namespace

json_value json_parse(const char * text, size_t n, const std::string & source, const json_limits & limits,
                      int32_t status) {
    return parser(text, n, source, limits, status).parse_document();
}

}  // namespace minicpm
