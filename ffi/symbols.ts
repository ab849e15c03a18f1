/**
 * The one dlopen table: every export of csrc/include/minicpm.h, same names and order.
 * Pointers travel as TypedArrays (`buffer`) for synchronous calls, or as numbers for opaque handles.
 * Request ids are uint64_t: passed as numbers (ids count up from 1, far below 2^53), read back as BigInts.
 * Types are written as strings: Bun 1.4.5 rejects the numeric FFIType.buffer ("invalid ABI type").
 */

export const symbols = {
  // Library
  minicpm_abi_version: { args: [], returns: 'u32' },
  minicpm_struct_size: { args: ['buffer'], returns: 'u32' }, // NUL-terminated name
  minicpm_struct_offset: { args: ['buffer', 'buffer'], returns: 'i32' }, // struct name, field name
  minicpm_last_error: { args: ['ptr', 'i32'], returns: 'i32' },
  minicpm_status_name: { args: ['i32'], returns: 'cstring' },
  minicpm_system_info: { args: ['ptr', 'i32'], returns: 'i32' },
  minicpm_time_us: { args: [], returns: 'i64' }, // BigInt

  // Model
  minicpm_model_default_params: { args: ['buffer'], returns: 'void' },
  minicpm_model_load: {
    args: ['buffer', 'buffer', 'buffer'], // NUL-terminated UTF-8 dir
    returns: 'i32',
  },
  minicpm_model_info: { args: ['ptr', 'buffer'], returns: 'i32' },
  minicpm_model_warnings: { args: ['ptr', 'ptr', 'i32'], returns: 'i32' },
  minicpm_model_save: { args: ['ptr', 'ptr'], returns: 'i32' },
  minicpm_model_free: { args: ['ptr'], returns: 'void' },

  // Context
  minicpm_context_default_params: { args: ['buffer'], returns: 'void' },
  minicpm_context_init: {
    args: ['ptr', 'buffer', 'buffer'],
    returns: 'i32',
  },
  minicpm_context_eval: {
    args: [
      'ptr', // ctx
      'buffer', // tokens
      'ptr', // seq_ids (nullable)
      'ptr', // output (nullable)
      'i32', // n_tokens
      'buffer', // logits
      'i64', // logits_cap (BigInt)
    ],
    returns: 'i32',
  },
  minicpm_context_seq_len: { args: ['ptr', 'i32'], returns: 'i32' },
  minicpm_context_seq_truncate: {
    args: ['ptr', 'i32', 'i32'],
    returns: 'i32',
  },
  minicpm_context_free: { args: ['ptr'], returns: 'void' },

  // Engine
  minicpm_engine_default_params: { args: ['buffer'], returns: 'void' },
  minicpm_sampling_default_params: { args: ['buffer'], returns: 'void' },
  minicpm_engine_init: {
    args: ['ptr', 'buffer', 'buffer'],
    returns: 'i32',
  },
  minicpm_engine_set_notify: { args: ['ptr', 'ptr', 'ptr'], returns: 'i32' }, // engine, fn, user_data
  minicpm_engine_submit: {
    args: [
      'ptr', // engine
      'buffer', // tokens
      'i32', // n_tokens
      'buffer', // sampling
      'ptr', // stop_ids (nullable)
      'i32', // n_stop_ids
      'ptr', // bias_ids (nullable)
      'ptr', // bias_values (nullable)
      'i32', // n_bias
      'buffer', // uint64_t request_id out
    ],
    returns: 'i32',
  },
  minicpm_engine_drain: {
    args: ['ptr', 'u64', 'buffer', 'i32'],
    returns: 'i32',
  },
  minicpm_engine_poll: { args: ['ptr', 'buffer', 'i32'], returns: 'i32' }, // uint64_t ids out
  minicpm_engine_cancel: { args: ['ptr', 'u64'], returns: 'i32' },
  minicpm_engine_set_mask: { args: ['ptr', 'u64', 'buffer', 'i32'], returns: 'i32' }, // const uint32_t * bits
  minicpm_engine_request_info: {
    args: ['ptr', 'u64', 'buffer'],
    returns: 'i32',
  },
  minicpm_engine_stats: { args: ['ptr', 'buffer'], returns: 'i32' },
  minicpm_engine_free: { args: ['ptr'], returns: 'void' },
} as const

export type Symbols = typeof symbols
