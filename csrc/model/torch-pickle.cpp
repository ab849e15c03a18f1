#include "model/torch-pickle.h"

#include "core/status.h"
#include "model/safetensors.h"

#include <cstdio>
#include <map>
#include <set>

namespace minicpm {

static void bad(const std::string & what, const std::string & msg) {
    fail(MINICPM_STATUS_INVALID_ARGUMENT, what + ": " + msg);
}

static uint32_t rd16(const uint8_t * p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
static uint32_t rd32(const uint8_t * p) { return rd16(p) | rd16(p + 2) << 16; }

int64_t torch_tensor_ref::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // bounded when the tensor was built (see checked_numel)
    return n;
}

bool torch_tensor_ref::contiguous() const {
    int64_t want = 1;
    for (size_t k = shape.size(); k-- > 0;) {
        if (shape[k] != 1 && stride[k] != want) return false;
        want *= shape[k];
    }
    return true;
}

pickle_value::~pickle_value() {
    std::vector<pickle_ref> stack;
    auto take = [&](pickle_value & v) {
        for (pickle_ref & x : v.items) stack.push_back(std::move(x));
        for (auto & e : v.entries) stack.push_back(std::move(e.first)), stack.push_back(std::move(e.second));
        v.items.clear();
        v.entries.clear();
    };
    take(*this);
    while (!stack.empty()) {
        pickle_ref r = std::move(stack.back());
        stack.pop_back();
        if (r && r.use_count() == 1) take(*r);  // the last reference: empty it, so its destruction does not recurse
    }
}

// torch.<Type>Storage -> the safetensors tag of its element type ("" when not a storage class).
static std::string storage_dtype(const std::string & global) {
    static const std::pair<const char *, const char *> table[] = {
        {"torch.BFloat16Storage", "BF16"}, {"torch.HalfStorage", "F16"},  {"torch.FloatStorage", "F32"},
        {"torch.DoubleStorage", "F64"},    {"torch.LongStorage", "I64"},  {"torch.IntStorage", "I32"},
        {"torch.ShortStorage", "I16"},     {"torch.CharStorage", "I8"},   {"torch.ByteStorage", "U8"},
        {"torch.BoolStorage", "BOOL"}};
    for (const auto & e : table)
        if (global == e.first) return e.second;
    return "";
}

namespace {
pickle_ref make(pickle_value::kind_t k) {
    auto v = std::make_shared<pickle_value>();
    v->kind = k;
    return v;
}
pickle_ref integer(int64_t x) {
    pickle_ref v = make(pickle_value::integer);
    v->i = x;
    return v;
}

// A tuple of non-negative integers (a size or a stride) of at most 8 entries.
std::vector<int64_t> int_tuple(const pickle_ref & v, const char * field, const std::string & what) {
    if (v->kind != pickle_value::tuple || v->items.size() > 8)
        bad(what, std::string("pickle: tensor ") + field + " is not a tuple of at most 8 integers");
    std::vector<int64_t> out;
    for (const pickle_ref & x : v->items) {
        if (x->kind != pickle_value::integer || x->i < 0 || x->i > (int64_t(1) << 40))
            bad(what, std::string("pickle: tensor ") + field + " holds " +
                          (x->kind == pickle_value::integer ? std::to_string(x->i) : "a non-integer"));
        out.push_back(x->i);
    }
    return out;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
pickle_ref rebuild_tensor(const pickle_ref & args, const std::string & what) {
    if (args->kind != pickle_value::tuple || args->items.size() < 4 || args->items[0]->kind != pickle_value::storage ||
        args->items[1]->kind != pickle_value::integer)
        bad(what, "pickle: _rebuild_tensor_v2 without (storage, offset, size, stride, ...)");
    pickle_ref v = make(pickle_value::tensor);
    v->t = args->items[0]->t;
    v->t.offset = args->items[1]->i;
    v->t.shape = int_tuple(args->items[2], "size", what);
    v->t.stride = int_tuple(args->items[3], "stride", what);
    if (v->t.offset < 0) bad(what, "pickle: negative storage offset");
    if (v->t.shape.size() != v->t.stride.size()) bad(what, "pickle: tensor size and stride differ in rank");
    int64_t n = 1;
    for (int64_t d : v->t.shape)
        if (__builtin_mul_overflow(n, d, &n) || n > (int64_t(1) << 48)) bad(what, "pickle: tensor too large");
    return v;
}
}  // namespace

pickle_ref unpickle_torch(const uint8_t * b, size_t size, const std::string & what) {
    std::vector<pickle_ref>        st;
    std::map<uint32_t, pickle_ref> memo;
    size_t                         p = 0;
    auto need = [&](size_t k) {
        if (k > size - p) bad(what, "pickle ends early");
    };
    auto pop = [&]() {
        if (st.empty() || st.back()->kind == pickle_value::mark) bad(what, "pickle stack underflow");
        pickle_ref v = st.back();
        st.pop_back();
        return v;
    };
    auto pop_mark = [&]() {
        std::vector<pickle_ref> items;
        while (!st.empty() && st.back()->kind != pickle_value::mark) items.push_back(st.back()), st.pop_back();
        if (st.empty()) bad(what, "pickle: no mark");
        st.pop_back();
        return std::vector<pickle_ref>(items.rbegin(), items.rend());
    };
    auto top = [&](pickle_value::kind_t k, const char * op) -> pickle_value & {
        if (st.empty() || st.back()->kind != k) bad(what, std::string("pickle: ") + op + " on the wrong kind of value");
        return *st.back();
    };
    auto set_items = [&](const std::vector<pickle_ref> & kv) {
        if (kv.size() % 2 != 0) bad(what, "pickle: SETITEMS with an odd number of values");
        pickle_value & d = top(pickle_value::dict, "SETITEMS");
        for (size_t j = 0; j < kv.size(); j += 2) d.entries.emplace_back(kv[j], kv[j + 1]);
    };
    auto global = [&](const std::string & name) {
        if (name != "collections.OrderedDict" && name != "torch._utils._rebuild_tensor_v2" &&
            name != "torch._utils._rebuild_parameter" && storage_dtype(name).empty())
            bad(what, "pickle: unsupported global " + name + " (only tensors, storages and OrderedDict are read)");
        pickle_ref v = make(pickle_value::global);
        v->s = name;
        st.push_back(v);
    };
    for (;;) {
        need(1);
        const uint8_t op = b[p++];
        switch (op) {
        case 0x80: need(1), ++p; break;     // PROTO
        case 0x95: need(8), p += 8; break;  // FRAME
        case ']': st.push_back(make(pickle_value::list)); break;
        case ')': st.push_back(make(pickle_value::tuple)); break;
        case '}': st.push_back(make(pickle_value::dict)); break;
        case 'N': st.push_back(make(pickle_value::none)); break;
        case 0x88: st.push_back(integer(1)); break;  // NEWTRUE
        case 0x89: st.push_back(integer(0)); break;  // NEWFALSE
        case '(': st.push_back(make(pickle_value::mark)); break;
        case 'K': need(1), st.push_back(integer(b[p])), p += 1; break;
        case 'M': need(2), st.push_back(integer(rd16(&b[p]))), p += 2; break;
        case 'J': need(4), st.push_back(integer(int32_t(rd32(&b[p])))), p += 4; break;
        case 0x8a: {  // LONG1: little-endian two's complement
            need(1);
            const uint32_t k = b[p++];
            need(k);
            if (k > 8) bad(what, "pickle: integer wider than 64 bits");
            uint64_t x = 0;
            for (uint32_t j = 0; j < k; ++j) x |= uint64_t(b[p + j]) << (8 * j);
            if (k > 0 && k < 8 && (b[p + k - 1] & 0x80)) x |= ~uint64_t(0) << (8 * k);
            p += k;
            st.push_back(integer(int64_t(x)));
            break;
        }
        case 0x8c: case 'X': {  // SHORT_BINUNICODE, BINUNICODE
            size_t k;
            if (op == 0x8c) need(1), k = b[p++];
            else need(4), k = rd32(&b[p]), p += 4;
            need(k);
            pickle_ref v = make(pickle_value::string);
            v->s.assign(reinterpret_cast<const char *>(&b[p]), k);
            p += k;
            st.push_back(v);
            break;
        }
        case 'c': {  // GLOBAL "module\nname\n"
            std::string name;
            for (int part = 0; part < 2; ++part) {
                size_t e = p;
                while (e < size && b[e] != '\n') ++e;
                if (e >= size) bad(what, "pickle: unterminated GLOBAL");
                name += (part ? "." : "") + std::string(reinterpret_cast<const char *>(&b[p]), e - p);
                p = e + 1;
            }
            global(name);
            break;
        }
        case 0x93: {  // STACK_GLOBAL
            pickle_ref name = pop(), mod = pop();
            if (name->kind != pickle_value::string || mod->kind != pickle_value::string)
                bad(what, "pickle: STACK_GLOBAL of non-strings");
            global(mod->s + "." + name->s);
            break;
        }
        case 'q': case 'r': case 0x94: {  // BINPUT, LONG_BINPUT, MEMOIZE: remember the top, leave it there
            uint32_t k = uint32_t(memo.size());
            if (op == 'q') need(1), k = b[p++];
            else if (op == 'r') need(4), k = rd32(&b[p]), p += 4;
            if (st.empty() || st.back()->kind == pickle_value::mark) bad(what, "pickle: memo store of nothing");
            memo[k] = st.back();
            break;
        }
        case 'h': case 'j': {  // BINGET, LONG_BINGET
            uint32_t k;
            if (op == 'h') need(1), k = b[p++];
            else need(4), k = rd32(&b[p]), p += 4;
            auto it = memo.find(k);
            if (it == memo.end()) bad(what, "pickle: memo reference " + std::to_string(k) + " was never stored");
            st.push_back(it->second);
            break;
        }
        case 'a': {
            pickle_ref v = pop();
            top(pickle_value::list, "APPEND").items.push_back(v);
            break;
        }
        case 'e': {
            std::vector<pickle_ref> items = pop_mark();
            pickle_value & l = top(pickle_value::list, "APPENDS");
            l.items.insert(l.items.end(), items.begin(), items.end());
            break;
        }
        case 't': case 0x85: case 0x86: case 0x87: {  // TUPLE, TUPLE1..3
            pickle_ref v = make(pickle_value::tuple);
            if (op == 't') {
                v->items = pop_mark();
            } else {
                const int k = op - 0x84;
                v->items.resize(size_t(k));
                for (int j = k - 1; j >= 0; --j) v->items[size_t(j)] = pop();
            }
            st.push_back(v);
            break;
        }
        case 's': {
            pickle_ref v = pop(), k = pop();
            set_items({k, v});
            break;
        }
        case 'u': set_items(pop_mark()); break;
        case 'b':  // BUILD: the state (a state dict's _metadata) is not needed; the object stays
            pop();
            if (st.empty()) bad(what, "pickle: BUILD without an object");
            break;
        case 'Q': {  // BINPERSID: ('storage', torch.<Type>Storage, key, location, numel)
            pickle_ref id = pop();
            if (id->kind != pickle_value::tuple || id->items.size() != 5 || id->items[0]->kind != pickle_value::string ||
                id->items[0]->s != "storage" || id->items[1]->kind != pickle_value::global ||
                id->items[2]->kind != pickle_value::string || id->items[4]->kind != pickle_value::integer ||
                id->items[4]->i < 0)
                bad(what, "pickle: persistent id is not ('storage', type, key, location, numel)");
            pickle_ref v = make(pickle_value::storage);
            v->t.dtype = storage_dtype(id->items[1]->s);
            if (v->t.dtype.empty()) bad(what, "pickle: storage of type " + id->items[1]->s);
            v->t.storage_key = id->items[2]->s;
            v->t.storage_numel = id->items[4]->i;
            st.push_back(v);
            break;
        }
        case 'R': {
            pickle_ref args = pop(), fn = pop();
            if (fn->kind != pickle_value::global) bad(what, "pickle: REDUCE of a non-global");
            if (fn->s == "torch._utils._rebuild_tensor_v2") {
                st.push_back(rebuild_tensor(args, what));
            } else if (fn->s == "torch._utils._rebuild_parameter") {  // (tensor, requires_grad, backward_hooks)
                if (args->kind != pickle_value::tuple || args->items.empty() || args->items[0]->kind != pickle_value::tensor)
                    bad(what, "pickle: _rebuild_parameter of a non-tensor");
                st.push_back(args->items[0]);
            } else if (fn->s == "collections.OrderedDict") {
                if (args->kind != pickle_value::tuple || !args->items.empty()) bad(what, "pickle: OrderedDict with arguments");
                st.push_back(make(pickle_value::dict));
            } else {
                bad(what, "pickle: " + fn->s + " is not callable");
            }
            break;
        }
        case '.': {
            pickle_ref v = pop();
            if (!st.empty()) bad(what, "pickle: values left on the stack at STOP");
            return v;
        }
        default: {
            char hex[8];
            std::snprintf(hex, sizeof(hex), "0x%02x", op);
            bad(what, std::string("pickle: unsupported opcode ") + hex + " at byte " + std::to_string(p - 1));
        }
        }
    }
}

const zip_member * torch_archive::find(const std::string & name) const {
    for (const zip_member & m : members)
        if (m.name == prefix + name) return &m;
    return nullptr;
}

torch_archive read_torch_archive(const uint8_t * data, uint64_t n, const std::string & what) {
    torch_archive a;
    a.members = read_zip_directory(data, n, what);
    const zip_member * pkl = nullptr;
    for (const zip_member & m : a.members) {
        const size_t slash = m.name.find('/');
        if (slash != std::string::npos && m.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
            pkl = &m;
            a.prefix = m.name.substr(0, slash + 1);
            break;
        }
    }
    if (pkl == nullptr) bad(what, "zip without <archive>/data.pkl (not a torch.save file)");
    if (const zip_member * bo = a.find("byteorder")) {
        const std::vector<uint8_t> order = zip_member_bytes(data, *bo, what);
        if (std::string(order.begin(), order.end()) != "little")
            fail(MINICPM_STATUS_UNSUPPORTED, what + ": saved with byteorder '" + std::string(order.begin(), order.end()) +
                                                 "'; only little-endian files are read");
    }
    const std::vector<uint8_t> bytes = zip_member_bytes(data, *pkl, what);
    a.root = unpickle_torch(bytes.data(), bytes.size(), what);
    return a;
}

safetensors_header parse_torch_checkpoint(const uint8_t * data, uint64_t n, const std::string & path) {
    torch_archive a;
    try {
        a = read_torch_archive(data, n, path);
    } catch (const error & e) {
        if (e.status() != MINICPM_STATUS_INVALID_ARGUMENT) throw;
        fail(MINICPM_STATUS_BAD_MODEL, e.what());
    }
    if (a.root->kind != pickle_value::dict)
        fail(MINICPM_STATUS_BAD_MODEL, path + ": data.pkl holds no dict of tensors (not a state dict)");
    safetensors_header h;  // data_offset 0: entry ranges are file offsets
    std::map<std::string, std::string> storage_dtype_of;
    std::set<std::string>              names;
    for (const auto & [key, value] : a.root->entries) {
        if (key->kind != pickle_value::string) fail(MINICPM_STATUS_BAD_MODEL, path + ": a state dict key is not a string");
        const std::string where = path + ": tensor '" + key->s + "'";
        if (value->kind != pickle_value::tensor) fail(MINICPM_STATUS_BAD_MODEL, where + " is not a tensor");
        const torch_tensor_ref & t = value->t;
        if (!t.contiguous())
            fail(MINICPM_STATUS_BAD_MODEL, where + " is not contiguous (save tensor.contiguous() instead)");
        auto [it, fresh] = storage_dtype_of.emplace(t.storage_key, t.dtype);
        if (!fresh && it->second != t.dtype)
            fail(MINICPM_STATUS_BAD_MODEL, where + ": storage " + t.storage_key + " is read as " + t.dtype + " and as " +
                                               it->second);
        const zip_member * m = a.find("data/" + t.storage_key);
        if (m == nullptr) fail(MINICPM_STATUS_BAD_MODEL, where + ": storage member data/" + t.storage_key + " is missing");
        if (m->method != 0)
            fail(MINICPM_STATUS_BAD_MODEL, where + ": storage data/" + t.storage_key + " is compressed; torch.save "
                                               "stores storages uncompressed so they can be mapped");
        const uint64_t esize = safetensors_dtype_size(t.dtype);
        if (uint64_t(t.storage_numel) > m->size / esize || uint64_t(t.storage_numel) * esize != m->size)
            fail(MINICPM_STATUS_BAD_MODEL, where + ": storage data/" + t.storage_key + " holds " + std::to_string(m->size) +
                                               " bytes, not " + std::to_string(t.storage_numel) + " " + t.dtype +
                                               " elements");
        const int64_t numel = t.numel();
        if (numel > 0 && (t.offset > t.storage_numel || numel > t.storage_numel - t.offset))
            fail(MINICPM_STATUS_BAD_MODEL, where + ": " + std::to_string(numel) + " elements from offset " +
                                               std::to_string(t.offset) + " lie outside its storage of " +
                                               std::to_string(t.storage_numel));
        safetensors_entry e;
        e.name = key->s;
        e.dtype = t.dtype;
        e.shape = t.shape;
        e.begin = m->data_offset + uint64_t(numel > 0 ? t.offset : 0) * esize;
        e.end = e.begin + uint64_t(numel) * esize;
        if (!names.insert(e.name).second) fail(MINICPM_STATUS_BAD_MODEL, where + " appears twice");
        h.entries.push_back(std::move(e));
    }
    return h;
}

}  // namespace minicpm
