/*
 * minicpm.h - the one public C header of the minicpm-edge engine.
 *
 * Rules of this ABI (see docs/ARCHITECTURE.md in the shared docs):
 *   - Opaque handles; every object has an init/free pair. Free functions accept NULL.
 *   - Params structs are passed by pointer and filled first by *_default_params(); each carries its own
 *     size in its first field so that an older caller is detected (MINICPM_STATUS_ABI_MISMATCH).
 *   - Fixed-width fields only; no struct by value; no bool.
 *   - Every function that can fail returns int32_t: 0 = ok, > 0 = recoverable / "try again", < 0 = error.
 *     The message of the last failure on the calling thread is read with minicpm_last_error(). Each one lists
 *     its status codes; any of them may also return _OUT_OF_MEMORY or _INTERNAL (a bug caught at the boundary).
 *   - ABI structs have no implicit padding: every gap the compiler would insert is a named pad field.
 *   - No function aborts or exits the process; C++ exceptions stop at this boundary.
 *   - Callbacks are doorbells: integer arguments, void return, called from an engine thread.
 *
 * Units: token counts are tokens, sizes are bytes, times are microseconds on the engine's monotonic clock
 * (minicpm_time_us()).
 */
#ifndef MINICPM_H
#define MINICPM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#    define MINICPM_API __declspec(dllexport)
#else
#    define MINICPM_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a function signature or struct layout changes. */
#define MINICPM_ABI_VERSION 3

/* Fixed maxima that size the arrays inside the ABI structs. */
#define MINICPM_MAX_TOP_LOGPROBS 20 /* top-n alternatives carried by one event      */
#define MINICPM_MAX_EOS_IDS      8  /* end-of-sequence ids reported by model info   */
#define MINICPM_KV_BLOCK_SIZE    64 /* tokens per KV cache block                    */
#define MINICPM_SPEC_MAX_DEPTH   8  /* per-depth acceptance counters in engine stats */

/* ---------------------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------------------- */
enum minicpm_status {
    MINICPM_STATUS_OK               = 0,
    MINICPM_STATUS_QUEUE_FULL       = 1,   /* recoverable: the waiting queue is full, retry later            */
    MINICPM_STATUS_INVALID_ARGUMENT = -1,  /* a NULL pointer, a bad parameter value, a token id out of range  */
    MINICPM_STATUS_IO               = -2,  /* a file is missing or cannot be read / mapped                    */
    MINICPM_STATUS_BAD_MODEL        = -3,  /* config.json or a safetensors file is malformed or inconsistent  */
    MINICPM_STATUS_UNSUPPORTED      = -4,  /* valid input this build does not handle (dtype, arch, feature)   */
    MINICPM_STATUS_OUT_OF_MEMORY    = -5,  /* an allocation failed                                            */
    MINICPM_STATUS_NOT_FOUND        = -6,  /* unknown (or already released) request id                        */
    MINICPM_STATUS_TOO_LARGE        = -7,  /* the request can never fit: context length or KV budget          */
    MINICPM_STATUS_ABI_MISMATCH     = -8,  /* a params struct's size field does not match this library        */
    MINICPM_STATUS_INTERNAL         = -100 /* a bug: an unexpected exception was caught at the boundary       */
};

/* Why a request ended; carried by its last event. */
enum minicpm_finish {
    MINICPM_FINISH_NONE      = 0, /* not finished: the event carries a token                              */
    MINICPM_FINISH_STOP      = 1, /* an EOS id or a stop id was generated (it is the event's token)       */
    MINICPM_FINISH_LENGTH    = 2, /* n_max_tokens generated, or the context is full                       */
    MINICPM_FINISH_CANCELLED = 3, /* minicpm_engine_cancel() was called                                   */
    MINICPM_FINISH_ERROR     = 4  /* the engine failed on this request; the others keep running          */
};

enum minicpm_dtype {
    MINICPM_DTYPE_F32  = 0,
    MINICPM_DTYPE_F16  = 1,
    MINICPM_DTYPE_BF16 = 2,
    MINICPM_DTYPE_Q8   = 3, /* int8 weights, symmetric, one scale per group of input features        */
    MINICPM_DTYPE_Q4   = 4  /* int4 weights with group scales (and optional zero points)              */
};

/* Where the engine runs. AUTO picks the best compiled backend with a usable device (CPU today). */
enum minicpm_backend {
    MINICPM_BACKEND_AUTO = 0,
    MINICPM_BACKEND_CPU  = 1,
    MINICPM_BACKEND_CUDA = 2
};

/* InfLLM v2 sparse attention (MiniCPM4 "sparse_config"), chosen per load. AUTO follows config.json: on, variant
 * HF, when it has a sparse_config. HF / V2 turn it on with that block-selection variant (HF: the released
 * modeling file; V2: the later infllm_v2 kernels), using the model card's sparse_config when config.json has
 * none; OFF runs dense attention at every length. */
enum minicpm_sparse_mode {
    MINICPM_SPARSE_AUTO = 0,
    MINICPM_SPARSE_OFF  = 1,
    MINICPM_SPARSE_HF   = 2,
    MINICPM_SPARSE_V2   = 3
};

/* ---------------------------------------------------------------------------------------------------------
 * Library
 * ------------------------------------------------------------------------------------------------------- */

/* MINICPM_ABI_VERSION of the built library; the caller compares it with the version it was written for. */
MINICPM_API uint32_t minicpm_abi_version(void);

/* sizeof() of each ABI struct, so bindings can assert their layout. Returns 0 for an unknown name.
 * Names: "model_params", "model_info", "context_params", "engine_params", "sampling_params", "event",
 *        "request_info", "engine_stats". */
MINICPM_API uint32_t minicpm_struct_size(const char * name);

/* offsetof() of one field of an ABI struct (names as in minicpm_struct_size, fields as in this header, e.g.
 * ("engine_params", "kv_bytes")), so bindings can assert every field, not just the size. Returns -1 for an
 * unknown struct or field. */
MINICPM_API int32_t minicpm_struct_offset(const char * name, const char * field);

/* Copies the calling thread's last error message (NUL-terminated, truncated to cap-1 bytes) into buf.
 * Returns the full message length in bytes (0 when there is none). buf may be NULL when cap is 0. */
MINICPM_API int32_t minicpm_last_error(char * buf, int32_t cap);

/* Short static name of a status code, e.g. "bad_model". Never NULL. */
MINICPM_API const char * minicpm_status_name(int32_t status);

/* Space-separated CPU features the fast kernels use on this machine, e.g. "avx512f avx512_bf16 amx_bf16".
 * Same buffer convention as minicpm_last_error; returns the length, or a negative status (_INTERNAL). */
MINICPM_API int32_t minicpm_system_info(char * buf, int32_t cap);

/* Microseconds on the monotonic clock used for all timings in events and request info. */
MINICPM_API int64_t minicpm_time_us(void);

/* ---------------------------------------------------------------------------------------------------------
 * Model: weights + config, immutable after load, shareable by any number of contexts and engines.
 * ------------------------------------------------------------------------------------------------------- */
typedef struct minicpm_model minicpm_model_t;

struct minicpm_model_params {
    uint32_t size;      /* = sizeof(struct minicpm_model_params), set by the default function          */
    int32_t  n_threads; /* threads used for load-time checks; 0 = number of cores                      */
    int32_t  backend;   /* enum minicpm_backend; default AUTO. Contexts and engines use the model's    */
    uint8_t  use_mmap;  /* 1 (default): weights stay in the page cache; 0: read into private memory    */
    uint8_t  pad_[3];
    /* On-the-fly quantization at load of a BF16 / F16 / F32 checkpoint, round to nearest (ignored for a
     * checkpoint that is already quantized): MINICPM_DTYPE_Q8 (symmetric int8, one f16 scale per group) or
     * MINICPM_DTYPE_Q4 (asymmetric int4: one f16 scale and one uint8 zero point per group); 0 = keep the stored
     * format (default). The projections are quantized; the LM head (the embedding matrix when tied) too when
     * quantize_head is 1 (default). */
    int32_t  quantize;
    int32_t  quant_group_size; /* input features per scale: a positive multiple of 32, or 0 = 128           */
    uint8_t  quantize_head;    /* 1 (default): quantize the LM head / tied embedding too; 0: keep it as is  */
    uint8_t  pad1_[3];
    int32_t  sparse;    /* enum minicpm_sparse_mode; default AUTO                                      */
    /* CUDA: bytes of the one device memory arena that holds the weights and every engine's KV pool and
     * activations, allocated at load; 0 (default) = 90% of the free device memory (half on an integrated
     * GPU such as Jetson, which shares the system's memory). A limit above the free memory, or one that
     * cannot hold the weights, fails the load with _OUT_OF_MEMORY. Ignored on the CPU. */
    uint64_t device_memory;
    /* CUDA: 1 (default): decode steps (up to 64 rows) are recorded once per batch size as CUDA graphs and
     * replayed, falling back to direct launches when a capture fails or a step differs from its graph
     * (minicpm_engine_stats counts both); 0: always direct launches. Ignored on the CPU. */
    uint8_t  cuda_graphs;
    uint8_t  pad2_[7];
};

struct minicpm_model_info {
    uint32_t size;
    int32_t  n_vocab;
    int32_t  n_ctx_train;       /* max_position_embeddings                                             */
    int32_t  n_embd;            /* hidden_size                                                         */
    int32_t  n_layer;
    int32_t  n_head;
    int32_t  n_head_kv;
    int32_t  n_head_dim;
    int32_t  n_ff;              /* intermediate_size                                                   */
    int32_t  bos_token_id;      /* -1 when absent                                                      */
    int32_t  n_eos;             /* number of valid entries in eos_token_ids                            */
    int32_t  eos_token_ids[MINICPM_MAX_EOS_IDS];
    int32_t  weight_dtype;      /* enum minicpm_dtype of the projection weights                        */
    uint8_t  tied_head;         /* 1 when the LM head is the embedding matrix                          */
    uint8_t  pad_[3];
    float    rms_norm_eps;
    float    rope_theta;
    float    scale_emb;
    float    residual_scale;    /* scale_depth / sqrt(n_layer)                                         */
    float    logit_divisor;     /* hidden_size / dim_model_base                                        */
    float    rope_mscale;       /* LongRoPE amplitude factor (1 when not scaled)                       */
    uint8_t  pad1_[4];
    uint64_t n_params;          /* parameter count                                                     */
    uint64_t weight_bytes;      /* bytes of all weight tensors as stored                               */
    uint64_t kv_bytes_per_token;/* KV cache bytes for one token of one sequence at the engine's default   */
                                /* dtype (BF16), including the sparse-attention compressed keys (f32)  */
    int32_t  backend;           /* enum minicpm_backend the model runs on (never AUTO)                 */
    uint8_t  sparse_config;     /* 1 when config.json has a sparse_config                               */
    uint8_t  quantization_config; /* 1 when config.json has a quantization_config                     */
    uint8_t  sparse_attention;  /* InfLLM v2 as loaded: enum minicpm_sparse_mode OFF, HF or V2            */
    uint8_t  pad2_[1];
    char     backend_name[32];  /* NUL-terminated, e.g. "cpu"                                           */
    /* CUDA (0 on the CPU): device memory free and total at load (before the arena), the arena's size, and */
    /* what is left in it now (engines take their KV pool and activations from it).                       */
    uint64_t device_memory_free;
    uint64_t device_memory_total;
    uint64_t device_arena_bytes;
    uint64_t device_arena_free;
};

/* The *_default_params functions fill *out (including its size field); out may be NULL (nothing happens). */
MINICPM_API void minicpm_model_default_params(struct minicpm_model_params * out);

/* Loads a model directory as published on the hub: config.json plus model.safetensors, or sharded files
 * listed by model.safetensors.index.json. Every header, dtype, shape and offset is validated against the
 * config; on failure *out is NULL and the last error names the file, the tensor and the problem.
 * Returns MINICPM_STATUS_OK, _INVALID_ARGUMENT (NULL dir or out, a bad params value), _IO, _BAD_MODEL,
 * _UNSUPPORTED (e.g. more than MINICPM_MAX_EOS_IDS eos ids, a backend this build lacks), _OUT_OF_MEMORY or
 * _ABI_MISMATCH (params->size).
 * The caller owns *out and releases it with minicpm_model_free() after every context/engine using it. */
MINICPM_API int32_t minicpm_model_load(const char * dir, const struct minicpm_model_params * params,
                                       minicpm_model_t ** out);

/* Fills *out (whose size field must be set; the default function is not needed for info structs:
 * the library writes the whole struct and checks out->size == sizeof). Returns _OK, _INVALID_ARGUMENT (model
 * or out is NULL) or _ABI_MISMATCH (out->size); on error *out is unchanged. */
MINICPM_API int32_t minicpm_model_info(const minicpm_model_t * model, struct minicpm_model_info * out);

/* Newline-separated warnings of the load: configuration the engine does not honour and what runs instead
 * (e.g. a sparse_config served with dense attention). Same buffer convention as minicpm_last_error; returns
 * the length (0 when there are none) or _INVALID_ARGUMENT (model is NULL). */
MINICPM_API int32_t minicpm_model_warnings(const minicpm_model_t * model, char * buf, int32_t cap);

/* Writes a model loaded with quantize (or from a quantized checkpoint) into the directory out_dir (which must
 * exist) as dir/model.safetensors + dir/config.json, so that later loads do no quantization work: q4 as GPTQ int4
 * in the AutoGPTQ layout (qweight / qzeros / scales / g_idx), q8 in the library's "minicpm_q8" layout
 * (README "Quantized weights"). The tokenizer files are not copied. CPU backend only. Returns _OK,
 * _INVALID_ARGUMENT (NULL argument, projections not quantized), _UNSUPPORTED (a shape or group size the format
 * cannot hold, weights on another backend) or _IO. */
MINICPM_API int32_t minicpm_model_save(const minicpm_model_t * model, const char * out_dir);

MINICPM_API void minicpm_model_free(minicpm_model_t * model);

/* ---------------------------------------------------------------------------------------------------------
 * Context: synchronous evaluation for tests and tools. Owns a KV cache for up to n_seq_max sequences;
 * tokens are appended to their sequence at its current length. Not thread-safe: one caller at a time.
 * ------------------------------------------------------------------------------------------------------- */
typedef struct minicpm_context minicpm_context_t;

struct minicpm_context_params {
    uint32_t size;
    int32_t  n_ctx;      /* max tokens per sequence, at most the model's n_ctx_train; 0 = n_ctx_train   */
    int32_t  n_seq_max;  /* number of sequences (ids 0 .. n_seq_max-1); default 1                       */
    int32_t  n_threads;  /* 0 = number of cores                                                         */
    int32_t  kv_dtype;   /* enum minicpm_dtype: F32 (default, exact) or BF16 / F16                      */
    int32_t  n_chunk;    /* internal prefill chunk in tokens; 0 = default (whole batch at once)         */
    uint8_t  use_reference; /* 1: run the plain reference ops instead of the fast kernels (for tests)   */
    uint8_t  exact_kernels; /* 1: fast ops on the CPU kernels with exact f32 products (as                */
                            /* MINICPM_KERNELS=exact: no bf16 rounding of activations); 0: the best one */
    uint8_t  pad_[6];
};

MINICPM_API void minicpm_context_default_params(struct minicpm_context_params * out);

/* Creates a context over model (params NULL = defaults); the model must outlive it. Returns _OK,
 * _INVALID_ARGUMENT (NULL model or out, a params value out of range), _TOO_LARGE (n_seq_max x n_ctx too
 * many KV blocks), _OUT_OF_MEMORY (the KV cache) or _ABI_MISMATCH (params->size); on error *out is NULL. */
MINICPM_API int32_t minicpm_context_init(minicpm_model_t * model, const struct minicpm_context_params * params,
                                         minicpm_context_t ** out);

/* Evaluates n_tokens (>= 1) tokens. seq_ids[i] (NULL = all 0) names the sequence token i is appended to; a
 * sequence's tokens must appear in order, but sequences may interleave. output[i] != 0 (NULL = only the last
 * token of the batch) asks for
 * the logits after token i; they are written as consecutive rows of n_vocab floats, in batch order, into
 * logits (capacity logits_cap floats). Returns the number of rows written (>= 0) or an error:
 * _INVALID_ARGUMENT (NULL ctx or tokens, bad token id or seq id, capacity too small) or _TOO_LARGE (n_ctx
 * exceeded); on error no sequence is changed. */
MINICPM_API int32_t minicpm_context_eval(minicpm_context_t * ctx, const int32_t * tokens, const int32_t * seq_ids,
                                         const uint8_t * output, int32_t n_tokens, float * logits,
                                         int64_t logits_cap);

/* Current length (tokens in the KV cache) of a sequence (>= 0), or _INVALID_ARGUMENT (NULL ctx, bad seq id). */
MINICPM_API int32_t minicpm_context_seq_len(const minicpm_context_t * ctx, int32_t seq_id);

/* Truncates a sequence to its first n_keep tokens (0 clears it; n_keep >= its length changes nothing) and
 * releases the KV blocks past them. Returns _OK or _INVALID_ARGUMENT (NULL ctx, bad seq id, n_keep < 0). */
MINICPM_API int32_t minicpm_context_seq_truncate(minicpm_context_t * ctx, int32_t seq_id, int32_t n_keep);

MINICPM_API void minicpm_context_free(minicpm_context_t * ctx);

/* ---------------------------------------------------------------------------------------------------------
 * Engine: owns a KV pool and a scheduler thread that runs every active request together (continuous
 * batching, chunked prefill interleaved with decode). All engine functions are thread-safe and return
 * quickly; none waits for compute.
 * ------------------------------------------------------------------------------------------------------- */
typedef struct minicpm_engine minicpm_engine_t;

struct minicpm_engine_params {
    uint32_t size;
    int32_t  n_threads;     /* compute threads including the scheduler thread; 0 = number of cores        */
    int32_t  n_batch_max;   /* most sequences decoded in one step; default 64                              */
    int32_t  n_chunk;       /* most prompt tokens prefilled in one step (all requests together); default 256 */
    int32_t  n_ctx;         /* most tokens (prompt + generated) of one request; 0 = model n_ctx_train      */
    int32_t  n_queue_max;   /* most waiting requests; a submit beyond it returns _QUEUE_FULL; default 256  */
    int32_t  kv_dtype;      /* enum minicpm_dtype of the KV cache; default BF16                             */
    uint8_t  prefix_cache;  /* 1 (default): keep full 64-token KV blocks after their request ends, indexed  */
                            /* by a hash chained over their token ids, and reuse a new request's longest   */
                            /* cached prefix (its last prompt token is always recomputed). 0 = off         */
    uint8_t  exact_kernels; /* 1: CPU kernels with exact f32 products (the family MINICPM_KERNELS=exact      */
                            /* picks: no bf16 rounding of activations); 0 (default): the best for the CPU  */
    uint8_t  pad_[2];
    uint64_t kv_bytes;      /* memory limit of the KV pool in bytes; 0 = default (1 GiB). The pool never   */
                            /* exceeds n_batch_max * n_ctx tokens, which is all admitted requests can use */
    /* Speculative decoding (EAGLE-2 dynamic draft trees verified in one step; greedy output equals plain
     * decoding, sampled output follows the same distribution by speculative rejection sampling). */
    minicpm_model_t * draft_model; /* a plain MiniCPM model with the target's vocabulary that drafts (e.g. 0.5B */
                            /* for 8B); NULL (default) = off. Must outlive the engine                       */
    int32_t  draft_num_iter;  /* tree depth (draft steps); default 2 (CPM.cu's CLI)                        */
    int32_t  draft_top_k;     /* children per expanded node and nodes expanded per level; default 10        */
    int32_t  draft_tree_size; /* verified rows incl. the last token, 2..64; default 12                      */
    int32_t  pad1_;
    uint64_t draft_kv_bytes;  /* memory limit of the draft's own KV pool; 0 = default (kv_bytes)           */
    const char * draft_head;  /* an EAGLE head directory (MiniCPM4-8B-Eagle-FRSpec layout, safetensors) that   */
                            /* drafts from the target's hidden states; NULL = none. Not with draft_model.   */
                            /* Read during minicpm_engine_init only                                        */
    const char * draft_vocab; /* FR-Spec: freq_N.pt or a little-endian int32 file of token ids by frequency: */
                            /* the draft scores only its first draft_vocab_size ids (an EAGLE head gathers */
                            /* those LM-head rows). NULL = the whole vocabulary. Read during init only      */
    int32_t  draft_vocab_size; /* ids of draft_vocab used; 0 = all of the file                             */
    int32_t  pad2_;
};

struct minicpm_sampling_params {
    uint32_t size;
    float    temperature;        /* <= 0: greedy                                                         */
    float    top_p;              /* 1 = off                                                              */
    float    min_p;              /* 0 = off                                                              */
    int32_t  top_k;              /* <= 0 = off                                                           */
    float    repetition_penalty; /* 1 = off; HF/CTRL style over prompt + generated tokens                */
    float    presence_penalty;   /* 0 = off; OpenAI style over generated tokens                          */
    float    frequency_penalty;  /* 0 = off; OpenAI style over generated tokens                          */
    int32_t  penalty_last_n;     /* window of tokens the penalties look at; -1 = all (default)           */
    int32_t  n_max_tokens;       /* most tokens to generate; <= 0 = until the context is full            */
    int32_t  n_top_logprobs;     /* 0..MINICPM_MAX_TOP_LOGPROBS alternatives per event                   */
    uint8_t  logprobs;           /* 1: fill event.logprob (log-softmax of the raw logits)                */
    uint8_t  ignore_eos;         /* 1: do not stop on the model's EOS ids                                */
    uint8_t  speculative;        /* 1 (default): use the engine's drafter when it has one; 0: opt out    */
    uint8_t  masked;             /* 1: constrained; samples only from the tokens minicpm_engine_set_mask  */
                                 /*    allowed for that token (a step without a fresh mask skips it)      */
    uint64_t seed;               /* same seed + same inputs = same tokens                                */
};
/* Defaults: temperature 1, top_p 1, min_p 0, top_k 0, repetition_penalty 1, presence/frequency 0,
 * penalty_last_n -1 (0 turns the penalties off), n_max_tokens 0, no logprobs, seed 0. */

/* One generated token, or the end of a request. */
struct minicpm_event {
    int32_t token;          /* generated token id; -1 on a finish-only event                             */
    int32_t finish_reason;  /* enum minicpm_finish; != NONE on the request's last event                  */
    float   logprob;        /* log-probability of token under the model's distribution (if requested)    */
    int32_t n_top;          /* valid entries in top_tokens / top_logprobs                                */
    int32_t top_tokens[MINICPM_MAX_TOP_LOGPROBS];
    float   top_logprobs[MINICPM_MAX_TOP_LOGPROBS];
    int64_t t_us;           /* when the token was sampled (minicpm_time_us clock)                        */
    int32_t n_spec_verifies;/* the request's draft trees verified so far (speculative decoding)           */
    int32_t n_spec_accepted;/* the request's drafts kept so far: mean accept length = 1 + accepted/verifies */
};

enum minicpm_request_state {
    MINICPM_REQUEST_WAITING    = 0, /* queued, no KV yet                                                   */
    MINICPM_REQUEST_PREFILLING = 1,
    MINICPM_REQUEST_DECODING   = 2,
    MINICPM_REQUEST_FINISHED   = 3  /* the finish event is waiting to be drained                          */
};

struct minicpm_request_info {
    uint32_t size;
    int32_t  state;             /* enum minicpm_request_state                                            */
    int32_t  n_prompt;          /* prompt tokens                                                          */
    int32_t  n_prefilled;       /* prompt tokens already in the KV cache                                 */
    int32_t  n_generated;
    int32_t  n_cached;          /* prompt tokens taken from the prefix cache at admission (not computed)  */
    int64_t  t_submit_us;
    int64_t  t_admit_us;        /* KV reserved and prefill started; 0 until then                          */
    int64_t  t_first_token_us;  /* 0 until the first token is sampled                                     */
    int64_t  t_end_us;          /* 0 until finished                                                       */
};

struct minicpm_engine_stats {
    uint32_t size;
    int32_t  n_running;         /* admitted requests (prefilling or decoding)                             */
    int32_t  n_waiting;         /* queued requests                                                        */
    int32_t  n_undrained;       /* finished requests whose last event was not drained yet                 */
    int32_t  kv_tokens_used;    /* KV slots held by requests (whole 64-token blocks)                      */
    int32_t  kv_tokens_total;   /* KV budget in tokens                                                    */
    int32_t  backend;           /* enum minicpm_backend the engine runs on                                */
    char     backend_name[32];  /* NUL-terminated backend and kernel family, e.g. "cpu avx512+amx"        */
    int32_t  pad_;
    uint64_t n_steps;           /* engine steps run                                                       */
    uint64_t n_prompt_tokens;   /* prompt tokens prefilled since init                                     */
    uint64_t n_generated_tokens;/* tokens sampled since init                                              */
    uint64_t n_errors;          /* requests finished with MINICPM_FINISH_ERROR                            */
    uint64_t n_prefix_query_tokens; /* prompt tokens looked up in the prefix cache (first admissions)     */
    uint64_t n_prefix_hit_tokens;   /* of those, tokens taken from the cache                              */
    uint64_t n_prefix_evictions;    /* cached idle blocks evicted to make room                             */
    int32_t  kv_tokens_cached;  /* KV slots of idle cached blocks (not held by any request; reusable,     */
                                /* evicted LRU first when the pool needs room; not in kv_tokens_used)     */
    uint8_t  prefix_cache;      /* 1 when the prefix cache is on                                           */
    uint8_t  pad1_[3];
    /* Speculative decoding: mean accept length = (n_spec_accepted + n_spec_verifies) / n_spec_verifies.    */
    uint64_t n_spec_verifies;   /* draft trees verified (one per decoding request and step with drafts)   */
    uint64_t n_spec_drafted;    /* draft nodes verified                                                   */
    uint64_t n_spec_accepted;   /* drafts kept (the sample after them not counted)                        */
    uint64_t n_spec_at_depth[MINICPM_SPEC_MAX_DEPTH]; /* [d-1]: verifies that kept at least d drafts       */
    uint64_t t_forward_us;      /* time in forward passes since init                                      */
    uint64_t t_attention_us;    /* of which in attention ops (dense and sparse, incl. compressed keys;    */
                                /* steps replayed as CUDA graphs are not split into ops)                  */
    /* CUDA graphs (model_params.cuda_graphs; all 0 on the CPU or when they are off): graphs recorded,       */
    /* steps that replayed one, and steps that tried one but ran as direct launches (capture failed, or the */
    /* step's launches differed from the graph's: the batch size's graph is then recorded again).            */
    uint64_t n_graph_captures;
    uint64_t n_graph_replays;
    uint64_t n_graph_fallbacks;
};

/* Doorbell: rung from the engine thread when a request goes from no pending events to some. n_ready is the
 * number of events pending at that moment; user_data is the pointer given to minicpm_engine_set_notify. It
 * must return quickly and may call any engine function. */
typedef void (*minicpm_notify_fn)(void * user_data, uint64_t request_id, int32_t n_ready);

MINICPM_API void minicpm_engine_default_params(struct minicpm_engine_params * out);
MINICPM_API void minicpm_sampling_default_params(struct minicpm_sampling_params * out);

/* Starts the scheduler thread (params NULL = defaults). The model must outlive the engine. Returns _OK,
 * _INVALID_ARGUMENT (NULL model or out, a params value out of range, kv_bytes below one KV block),
 * _OUT_OF_MEMORY (the KV pool) or _ABI_MISMATCH (params->size); on error *out is NULL. */
MINICPM_API int32_t minicpm_engine_init(minicpm_model_t * model, const struct minicpm_engine_params * params,
                                        minicpm_engine_t ** out);

/* Installs (or with NULL removes) the doorbell. Without one, callers poll with minicpm_engine_poll().
 * Returns once no call of the previous callback is in flight (unless called from inside the callback), so
 * the previous callback can be released afterwards. Returns _OK or _INVALID_ARGUMENT (engine is NULL). */
MINICPM_API int32_t minicpm_engine_set_notify(minicpm_engine_t * engine, minicpm_notify_fn fn, void * user_data);

/* Queues a request: the prompt tokens (copied), its sampling params (NULL = defaults), and extra stop token ids
 * (copied; may be NULL) and a logit bias (n_bias pairs added to the logits; -inf forbids a token; copied; may
 * be NULL). On success *request_id > 0 (ids increase).
 * Returns _OK, _QUEUE_FULL (retry later), _INVALID_ARGUMENT (NULL engine or request_id, empty prompt, token
 * id out of range, bad sampling value), _TOO_LARGE (prompt longer than n_ctx, or more KV than the whole
 * budget) or _ABI_MISMATCH (sampling->size); on error *request_id is 0 and nothing is queued. */
MINICPM_API int32_t minicpm_engine_submit(minicpm_engine_t * engine, const int32_t * tokens, int32_t n_tokens,
                                          const struct minicpm_sampling_params * sampling,
                                          const int32_t * stop_ids, int32_t n_stop_ids,
                                          const int32_t * bias_ids, const float * bias_values, int32_t n_bias,
                                          uint64_t * request_id);

/* Moves up to cap pending events of a request into out, oldest first. Returns the count (>= 0),
 * _NOT_FOUND or _INVALID_ARGUMENT (NULL engine or out, cap < 0). Once the event with finish_reason != NONE
 * has been drained the request id is released. When the drained events end with MINICPM_FINISH_ERROR,
 * minicpm_last_error() returns why. */
MINICPM_API int32_t minicpm_engine_drain(minicpm_engine_t * engine, uint64_t request_id, struct minicpm_event * out,
                                         int32_t cap);

/* Writes up to cap ids of requests with pending events into ids. Returns the count (>= 0) or
 * _INVALID_ARGUMENT (NULL engine or ids, cap < 0). */
MINICPM_API int32_t minicpm_engine_poll(minicpm_engine_t * engine, uint64_t * ids, int32_t cap);

/* Cancels a request at any point (waiting, prefilling or decoding). Its KV is released before the next step
 * and it ends with a MINICPM_FINISH_CANCELLED event. Returns _OK, _NOT_FOUND or _INVALID_ARGUMENT (NULL
 * engine). */
MINICPM_API int32_t minicpm_engine_cancel(minicpm_engine_t * engine, uint64_t request_id);

/* Constrained decoding: the tokens a request submitted with sampling.masked = 1 may take as its next token,
 * a bitset (bit i % 32 of bits[i / 32] set = token i allowed) of n_words = ceil(n_vocab / 32) words. The
 * engine copies it and applies it (-inf for every other token) to the next token it samples for the request,
 * then forgets it; until a mask is set the request is left out of the batch (no other request waits). A
 * second call before that sample replaces the first. Returns _OK, _NOT_FOUND (unknown or finished id; a
 * finished request ignores the call), or _INVALID_ARGUMENT (NULL engine or bits, wrong n_words, a request
 * not submitted masked). */
MINICPM_API int32_t minicpm_engine_set_mask(minicpm_engine_t * engine, uint64_t request_id, const uint32_t * bits,
                                            int32_t n_words);

/* Fills *out (size field set, as for minicpm_model_info) with the state and timings of a request that has
 * not been released. Returns _OK, _NOT_FOUND, _INVALID_ARGUMENT (NULL engine or out) or _ABI_MISMATCH. */
MINICPM_API int32_t minicpm_engine_request_info(minicpm_engine_t * engine, uint64_t request_id,
                                                struct minicpm_request_info * out);

/* Fills *out (size field set) with a snapshot of the engine. Returns _OK, _INVALID_ARGUMENT (NULL engine or
 * out) or _ABI_MISMATCH. */
MINICPM_API int32_t minicpm_engine_stats(minicpm_engine_t * engine, struct minicpm_engine_stats * out);

/* Stops the scheduler thread after the step in flight (requests still running are dropped) and frees the KV
 * pool. Must not be called from the notify callback. */
MINICPM_API void minicpm_engine_free(minicpm_engine_t * engine);

#ifdef __cplusplus
}
#endif

#endif /* MINICPM_H */
