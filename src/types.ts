/**
 * The library API's public types: what `loadModel()` returns and what `generate()` yields.
 * routes/ and the CLI consume only these.
 */

import type { ToolCall, ToolSpec } from './chat/tools/types'

export type { ToolCall, ToolSpec } from './chat/tools/types'

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error'

export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool'
  content: string | Array<{ type: 'text'; text: string }>
  toolCalls?: ToolCall[] // assistant turns that called tools (rendered by the model's tool format)
  reasoning?: string // an assistant turn's thought, sent back
}

/** Constrained decoding (GenerateRequest.responseFormat), as in OpenAI's response_format. */
export type ResponseFormat =
  | { type: 'json_object' }
  /**
   * strict: true: every keyword is enforced, an unsupported one is an error naming it. Otherwise unsupported
   * keywords are dropped and the rest enforced; `ignored` receives their JSON pointers when the grammar is compiled.
   */
  | { type: 'json_schema'; schema: Record<string, unknown>; strict?: boolean; name?: string; ignored?: string[] }
  /** A forced call (tool_choice required / named) in the MiniCPM tool format, to one of these tools. */
  | { type: 'tool_call'; tools: Array<{ name: string; parameters?: Record<string, unknown> }> }

export interface SamplingOptions {
  temperature?: number // <= 0: greedy
  topP?: number
  topK?: number
  minP?: number
  repetitionPenalty?: number
  presencePenalty?: number
  frequencyPenalty?: number
  penaltyLastN?: number
  seed?: number
  logitBias?: Record<number, number>
  maxTokens?: number
  ignoreEos?: boolean
  /** false: no speculative decoding for this request (when the model was loaded with a draft) */
  speculative?: boolean
  /**
   * Constrained decoding: the output is a JSON value (json_object) or matches a JSON schema (json_schema), token
   * by token, from any model. A schema keyword the engine cannot honour throws UnsupportedSchemaError.
   */
  responseFormat?: ResponseFormat
  stop?: string[] // stop strings, cut from the output
  stopTokenIds?: number[]
  logprobs?: boolean
  topLogprobs?: number // 0..20
}

export interface GenerateRequest extends SamplingOptions {
  prompt?: string | number[] // text (tokenized with BOS per addSpecialTokens) or token ids
  messages?: ChatMessage[] // rendered with the model's chat template
  tools?: ToolSpec[] // rendered with the model's tool format (ModelInfo.toolFormat) instead of the chat template
  addGenerationPrompt?: boolean // default true
  addSpecialTokens?: boolean // BOS; default true
  chatTemplateKwargs?: Record<string, unknown>
  /**
   * A text prompt's special-token text ('<|im_start|>') is tokenized as plain text (default true), as HF's
   * split_special_tokens does; false parses it into control tokens (the old behaviour, for hand-built raw
   * prompts). Chat message content is always plain text: only the template's own markup is special.
   */
  splitSpecialTokens?: boolean
  skipSpecialTokens?: boolean // default true
  signal?: AbortSignal
}

export interface TokenLogprob {
  token: number
  text: string
  logprob: number
  top: Array<{ token: number; text: string; logprob: number }>
}

export interface Usage {
  promptTokens: number
  completionTokens: number
  cachedTokens: number // prompt tokens whose KV came from the prefix cache (not computed)
}

export interface Timings {
  queueMs: number // submit -> admitted
  prefillMs: number // admitted -> first token
  decodeMs: number // first token -> end
  perTokenMs: number // mean inter-token latency
  /** Speculative decoding: this request's draft trees verified and drafts kept; mean accept length 1 + kept/verifies */
  specVerifies?: number
  specAccepted?: number
  meanAcceptLength?: number
  // Share of the engine's forward time spent in attention (dense and InfLLM v2 sparse) while the request ran:
  // engine-wide, so concurrent requests share the figure; absent when the engine reports no forward time.
  attentionShare?: number
}

export type GenerateEvent =
  | { type: 'start'; promptTokens: number } // accepted by the engine
  | { type: 'prefill'; done: number; total: number } // progress of a long prompt
  | { type: 'delta'; text: string; tokens: number[]; logprobs?: TokenLogprob[]; tUs: number }
  | {
      type: 'finish'
      reason: FinishReason
      usage: Usage
      timings: Timings
      error?: string
      /** With reason 'length': what ended it ('max_tokens', the context 'n_ctx', or the shared 'kv_cache' pool). */
      lengthCause?: 'max_tokens' | 'n_ctx' | 'kv_cache'
    }

export interface ModelInfo {
  id: string
  dir: string
  randomWeights: boolean // the generated default checkpoint
  nVocab: number
  nCtx: number
  nCtxTrain: number
  nLayer: number
  nEmbd: number
  weightDtype: string
  kvDtype: string // the engine's KV cache element type: f32, bf16 or f16
  nParams: number
  weightBytes: number
  bitsPerWeight?: number // weightBytes * 8 / nParams (scales and zero points included)
  eosTokenIds: number[]
  bosTokenId: number
  backend: string // 'cpu' | 'cuda'
  backendName: string
  sparseConfig: boolean // config.json has a sparse_config
  sparseAttention: 'off' | 'hf' | 'v2' // InfLLM v2 sparse attention as loaded (variant), or dense
  quantizationConfig: boolean // config.json has a quantization_config
  warnings: string[] // configuration the engine reads but does not honour, each naming what runs instead
  toolFormat: string | null // how tools, tool calls and tool turns are rendered and parsed; null: no tools
}

export interface EngineStats {
  backend: string // 'cpu' | 'cuda'
  backendName: string // backend and kernel family
  running: number
  waiting: number
  kvTokensUsed: number
  kvTokensTotal: number
  steps: number
  promptTokens: number
  generatedTokens: number
  errors: number
  prefixQueryTokens: number // prompt tokens looked up in the prefix cache
  prefixHitTokens: number // of those, tokens found
  prefixEvictions: number // idle cached 64-token blocks evicted
  kvTokensCached: number // KV slots held only by the prefix cache (reusable, not in kvTokensUsed)
  prefixCache: number // 1 when on
  /** Speculative decoding: draft trees verified, draft nodes verified, drafts kept. */
  specVerifies: number
  specDrafted: number
  specAccepted: number
  /** [d - 1]: verifies that kept at least d drafts */
  specAtDepth: number[]
  /** 1 + kept / verifies (0 without verifies) */
  specMeanAcceptLength: number
  /** [d - 1]: share of verifies that kept at least d drafts */
  specDepthAcceptance: number[]
  forwardUs: number // forward-pass time since the engine started
  attentionUs: number // of which attention
  /** CUDA graphs (0 on the CPU or with --cuda-graphs off): recorded, steps replayed, steps run directly instead. */
  graphCaptures: number
  graphReplays: number
  graphFallbacks: number
}
