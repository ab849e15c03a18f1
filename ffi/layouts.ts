/**
 * Byte layouts of the ABI structs of minicpm.h: every field, arrays and pads included, under its C name, so
 * that library.ts can check each offset against minicpm_struct_offset() and each size against the room the
 * library gives it. Keys are the camelCase names the decoders use; pads keep their C name.
 */

export const MAX_TOP_LOGPROBS = 20
export const MAX_EOS_IDS = 8
export const SPEC_MAX_DEPTH = 8
const BACKEND_NAME_BYTES = 32

export type Scalar = 'u8' | 'i32' | 'u32' | 'f32' | 'i64' | 'u64'
/** A scalar is [offset, kind, C name]; an array (pads are u8 arrays) adds its element count. */
export type Field = readonly [offset: number, kind: Scalar, c: string, count?: number]
export type Layout = Readonly<Record<string, Field>>

export const kindBytes: Record<Scalar, number> = { u8: 1, i32: 4, u32: 4, f32: 4, i64: 8, u64: 8 }

export const modelParamsLayout = {
  size: [0, 'u32', 'size'],
  nThreads: [4, 'i32', 'n_threads'],
  backend: [8, 'i32', 'backend'],
  useMmap: [12, 'u8', 'use_mmap'],
  pad_: [13, 'u8', 'pad_', 3],
  quantize: [16, 'i32', 'quantize'],
  quantGroupSize: [20, 'i32', 'quant_group_size'],
  quantizeHead: [24, 'u8', 'quantize_head'],
  pad1_: [25, 'u8', 'pad1_', 3],
  sparse: [28, 'i32', 'sparse'],
  deviceMemory: [32, 'u64', 'device_memory'],
  cudaGraphs: [40, 'u8', 'cuda_graphs'],
  pad2_: [41, 'u8', 'pad2_', 7],
} as const satisfies Layout

export const modelInfoLayout = {
  size: [0, 'u32', 'size'],
  nVocab: [4, 'i32', 'n_vocab'],
  nCtxTrain: [8, 'i32', 'n_ctx_train'],
  nEmbd: [12, 'i32', 'n_embd'],
  nLayer: [16, 'i32', 'n_layer'],
  nHead: [20, 'i32', 'n_head'],
  nHeadKv: [24, 'i32', 'n_head_kv'],
  nHeadDim: [28, 'i32', 'n_head_dim'],
  nFf: [32, 'i32', 'n_ff'],
  bosTokenId: [36, 'i32', 'bos_token_id'],
  nEos: [40, 'i32', 'n_eos'],
  eosTokenIds: [44, 'i32', 'eos_token_ids', MAX_EOS_IDS],
  weightDtype: [76, 'i32', 'weight_dtype'],
  tiedHead: [80, 'u8', 'tied_head'],
  pad_: [81, 'u8', 'pad_', 3],
  rmsNormEps: [84, 'f32', 'rms_norm_eps'],
  ropeTheta: [88, 'f32', 'rope_theta'],
  scaleEmb: [92, 'f32', 'scale_emb'],
  residualScale: [96, 'f32', 'residual_scale'],
  logitDivisor: [100, 'f32', 'logit_divisor'],
  ropeMscale: [104, 'f32', 'rope_mscale'],
  pad1_: [108, 'u8', 'pad1_', 4],
  nParams: [112, 'u64', 'n_params'],
  weightBytes: [120, 'u64', 'weight_bytes'],
  kvBytesPerToken: [128, 'u64', 'kv_bytes_per_token'],
  backend: [136, 'i32', 'backend'],
  sparseConfig: [140, 'u8', 'sparse_config'],
  quantizationConfig: [141, 'u8', 'quantization_config'],
  sparseAttention: [142, 'u8', 'sparse_attention'],
  pad2_: [143, 'u8', 'pad2_', 1],
  backendName: [144, 'u8', 'backend_name', BACKEND_NAME_BYTES],
  deviceMemoryFree: [176, 'u64', 'device_memory_free'],
  deviceMemoryTotal: [184, 'u64', 'device_memory_total'],
  deviceArenaBytes: [192, 'u64', 'device_arena_bytes'],
  deviceArenaFree: [200, 'u64', 'device_arena_free'],
} as const satisfies Layout

export const contextParamsLayout = {
  size: [0, 'u32', 'size'],
  nCtx: [4, 'i32', 'n_ctx'],
  nSeqMax: [8, 'i32', 'n_seq_max'],
  nThreads: [12, 'i32', 'n_threads'],
  kvDtype: [16, 'i32', 'kv_dtype'],
  nChunk: [20, 'i32', 'n_chunk'],
  useReference: [24, 'u8', 'use_reference'],
  exactKernels: [25, 'u8', 'exact_kernels'],
  pad_: [26, 'u8', 'pad_', 6],
} as const satisfies Layout

export const engineParamsLayout = {
  size: [0, 'u32', 'size'],
  nThreads: [4, 'i32', 'n_threads'],
  nBatchMax: [8, 'i32', 'n_batch_max'],
  nChunk: [12, 'i32', 'n_chunk'],
  nCtx: [16, 'i32', 'n_ctx'],
  nQueueMax: [20, 'i32', 'n_queue_max'],
  kvDtype: [24, 'i32', 'kv_dtype'],
  prefixCache: [28, 'u8', 'prefix_cache'],
  exactKernels: [29, 'u8', 'exact_kernels'],
  pad_: [30, 'u8', 'pad_', 2],
  kvBytes: [32, 'u64', 'kv_bytes'],
  draftModel: [40, 'u64', 'draft_model'],
  draftNumIter: [48, 'i32', 'draft_num_iter'],
  draftTopK: [52, 'i32', 'draft_top_k'],
  draftTreeSize: [56, 'i32', 'draft_tree_size'],
  pad1_: [60, 'u8', 'pad1_', 4],
  draftKvBytes: [64, 'u64', 'draft_kv_bytes'],
  draftHead: [72, 'u64', 'draft_head'],
  draftVocab: [80, 'u64', 'draft_vocab'],
  draftVocabSize: [88, 'i32', 'draft_vocab_size'],
  pad2_: [92, 'u8', 'pad2_', 4],
} as const satisfies Layout

export const samplingParamsLayout = {
  size: [0, 'u32', 'size'],
  temperature: [4, 'f32', 'temperature'],
  topP: [8, 'f32', 'top_p'],
  minP: [12, 'f32', 'min_p'],
  topK: [16, 'i32', 'top_k'],
  repetitionPenalty: [20, 'f32', 'repetition_penalty'],
  presencePenalty: [24, 'f32', 'presence_penalty'],
  frequencyPenalty: [28, 'f32', 'frequency_penalty'],
  penaltyLastN: [32, 'i32', 'penalty_last_n'],
  maxTokens: [36, 'i32', 'n_max_tokens'],
  topLogprobs: [40, 'i32', 'n_top_logprobs'],
  logprobs: [44, 'u8', 'logprobs'],
  ignoreEos: [45, 'u8', 'ignore_eos'],
  speculative: [46, 'u8', 'speculative'],
  masked: [47, 'u8', 'masked'],
  seed: [48, 'u64', 'seed'],
} as const satisfies Layout

export const eventLayout = {
  token: [0, 'i32', 'token'],
  finishReason: [4, 'i32', 'finish_reason'],
  logprob: [8, 'f32', 'logprob'],
  nTop: [12, 'i32', 'n_top'],
  topTokens: [16, 'i32', 'top_tokens', MAX_TOP_LOGPROBS],
  topLogprobs: [96, 'f32', 'top_logprobs', MAX_TOP_LOGPROBS],
  tUs: [176, 'i64', 't_us'],
  specVerifies: [184, 'i32', 'n_spec_verifies'],
  specAccepted: [188, 'i32', 'n_spec_accepted'],
} as const satisfies Layout

export const requestInfoLayout = {
  size: [0, 'u32', 'size'],
  state: [4, 'i32', 'state'],
  nPrompt: [8, 'i32', 'n_prompt'],
  nPrefilled: [12, 'i32', 'n_prefilled'],
  nGenerated: [16, 'i32', 'n_generated'],
  nCached: [20, 'i32', 'n_cached'],
  tSubmitUs: [24, 'i64', 't_submit_us'],
  tAdmitUs: [32, 'i64', 't_admit_us'],
  tFirstTokenUs: [40, 'i64', 't_first_token_us'],
  tEndUs: [48, 'i64', 't_end_us'],
} as const satisfies Layout

export const engineStatsLayout = {
  size: [0, 'u32', 'size'],
  running: [4, 'i32', 'n_running'],
  waiting: [8, 'i32', 'n_waiting'],
  undrained: [12, 'i32', 'n_undrained'],
  kvTokensUsed: [16, 'i32', 'kv_tokens_used'],
  kvTokensTotal: [20, 'i32', 'kv_tokens_total'],
  backend: [24, 'i32', 'backend'],
  backendName: [28, 'u8', 'backend_name', BACKEND_NAME_BYTES],
  pad_: [60, 'u8', 'pad_', 4],
  steps: [64, 'u64', 'n_steps'],
  promptTokens: [72, 'u64', 'n_prompt_tokens'],
  generatedTokens: [80, 'u64', 'n_generated_tokens'],
  errors: [88, 'u64', 'n_errors'],
  prefixQueryTokens: [96, 'u64', 'n_prefix_query_tokens'],
  prefixHitTokens: [104, 'u64', 'n_prefix_hit_tokens'],
  prefixEvictions: [112, 'u64', 'n_prefix_evictions'],
  kvTokensCached: [120, 'i32', 'kv_tokens_cached'],
  prefixCache: [124, 'u8', 'prefix_cache'],
  pad1_: [125, 'u8', 'pad1_', 3],
  specVerifies: [128, 'u64', 'n_spec_verifies'],
  specDrafted: [136, 'u64', 'n_spec_drafted'],
  specAccepted: [144, 'u64', 'n_spec_accepted'],
  specAtDepth: [152, 'u64', 'n_spec_at_depth', SPEC_MAX_DEPTH],
  forwardUs: [216, 'u64', 't_forward_us'],
  attentionUs: [224, 'u64', 't_attention_us'],
  graphCaptures: [232, 'u64', 'n_graph_captures'],
  graphReplays: [240, 'u64', 'n_graph_replays'],
  graphFallbacks: [248, 'u64', 'n_graph_fallbacks'],
} as const satisfies Layout

/** sizeof() of each struct, keyed by the names minicpm_struct_size() knows. */
export const structSizes = {
  model_params: 48,
  model_info: 208,
  context_params: 32,
  engine_params: 96,
  sampling_params: 56,
  event: 192,
  request_info: 56,
  engine_stats: 256,
} as const
export type StructName = keyof typeof structSizes

export const layouts: Record<StructName, Layout> = {
  model_params: modelParamsLayout,
  model_info: modelInfoLayout,
  context_params: contextParamsLayout,
  engine_params: engineParamsLayout,
  sampling_params: samplingParamsLayout,
  event: eventLayout,
  request_info: requestInfoLayout,
  engine_stats: engineStatsLayout,
}

export function fieldBytes([, kind, , count = 1]: Field): number {
  return kindBytes[kind] * count
}

/**
 * What differs between a bindings layout and the library's (empty when nothing does): each field's offset
 * against offsetOf(C name), and its size against the room the library leaves before its next field.
 */
export function layoutProblems(
  name: string,
  layout: Layout,
  size: number,
  offsetOf: (field: string) => number,
): string[] {
  const problems: string[] = []
  const placed: Array<[Field, number]> = []
  for (const field of Object.values(layout)) {
    const native = offsetOf(field[2])
    if (native < 0) {
      problems.push(`${name}.${field[2]}: the library has no such field`)
      continue
    }
    if (native !== field[0]) {
      problems.push(`${name}.${field[2]}: offset ${field[0]} in the bindings, ${native} in the library`)
    }
    placed.push([field, native])
  }
  placed.sort((a, b) => a[1] - b[1])
  placed.forEach(([field, native], i) => {
    const room = (placed[i + 1]?.[1] ?? size) - native
    const bytes = fieldBytes(field)
    if (room !== bytes) {
      const hint = room > bytes ? ' (or the bindings lack the field after it)' : ''
      problems.push(`${name}.${field[2]}: ${bytes} bytes in the bindings, ${room} in the library${hint}`)
    }
  })
  if (placed.length > 0 && placed[0]![1] !== 0) problems.push(`${name}: the bindings lack the field at offset 0`)
  return problems
}
