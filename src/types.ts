/**
 * The library API's public types: what `loadModel()` returns and what `generate()` yields.
 * routes/ and the CLI consume only these.
 */

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error'

export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant'
  content: string | Array<{ type: 'text'; text: string }>
}

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
  stop?: string[] // stop strings, cut from the output
  stopTokenIds?: number[]
  logprobs?: boolean
  topLogprobs?: number // 0..20
}

export interface GenerateRequest extends SamplingOptions {
  prompt?: string | number[] // text (tokenized with BOS per addSpecialTokens) or token ids
  messages?: ChatMessage[] // rendered with the model's chat template
  addGenerationPrompt?: boolean // default true
  addSpecialTokens?: boolean // BOS; default true
  chatTemplateKwargs?: Record<string, unknown>
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
}

export interface Timings {
  queueMs: number // submit -> admitted
  prefillMs: number // admitted -> first token
  decodeMs: number // first token -> end
  perTokenMs: number // mean inter-token latency
  // Share of the engine's forward time spent in attention (dense and InfLLM v2 sparse) while the request ran:
  // engine-wide, so concurrent requests share the figure; absent when the engine reports no forward time.
  attentionShare?: number
}

export type GenerateEvent =
  | { type: 'start'; promptTokens: number } // accepted by the engine
  | { type: 'prefill'; done: number; total: number } // progress of a long prompt
  | { type: 'delta'; text: string; tokens: number[]; logprobs?: TokenLogprob[]; tUs: number }
  | { type: 'finish'; reason: FinishReason; usage: Usage; timings: Timings; error?: string }

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
  eosTokenIds: number[]
  bosTokenId: number
  backend: string // 'cpu' | 'cuda'
  backendName: string
  sparseConfig: boolean // config.json has a sparse_config
  sparseAttention: 'off' | 'hf' | 'v2' // InfLLM v2 sparse attention as loaded (variant), or dense
  quantizationConfig: boolean // config.json has a quantization_config
  warnings: string[] // configuration the engine reads but does not honour, each naming what runs instead
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
  forwardUs: number // forward-pass time since the engine started
  attentionUs: number // of which attention
}
