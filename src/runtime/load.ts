/**
 * loadModel(): a model directory -> native model + tokenizer + chat template + engine, behind the Model
 * interface that routes/ and the CLI use.
 */
import { join } from 'node:path'
import { NativeEngine, NativeModel, type KvDtype, type SparseMode } from '../../ffi/index'
import { ChatTemplate } from '../chat/index'
import { loadTokenizer, type Tokenizer } from '../tokenizer/index'
import type { ChatMessage, EngineStats, GenerateEvent, GenerateRequest, ModelInfo, SamplingOptions } from '../types'
import { cacheRoot, DEFAULT_MODEL_ID, ensureDefaultModel } from './default-model'
import { generate, PREFILL_TICK_MS, type GenerateDeps } from './generate'
import { readModelDir } from './model-dir'

/** KV cache element types the engine takes. Without one it uses bf16 (minicpm.h, engine_params.kv_dtype). */
export const KV_DTYPES = ['f32', 'bf16', 'f16'] as const satisfies readonly KvDtype[]
export const DEFAULT_KV_DTYPE: KvDtype = 'bf16'

export interface LoadOptions {
  nThreads?: number
  nCtx?: number
  kvBytes?: number
  kvDtype?: KvDtype
  nBatchMax?: number
  nChunk?: number
  nQueueMax?: number
  useMmap?: boolean
  /** InfLLM v2 sparse attention: 'auto' (default) as config.json says, 'off' dense, 'hf' / 'v2' on (the model
   * card's sparse_config when config.json has none). */
  sparse?: SparseMode
  /** Overrides MINICPM_FFI_POLL for this model's engine. */
  poll?: boolean
  /** How often a request waiting for its first token reports prefill progress; default 100 ms. */
  prefillTickMs?: number
  onProgress?: (phase: string, done: number, total: number) => void
}

export interface Model extends Disposable {
  info: ModelInfo
  tokenize(text: string, opts?: { addSpecialTokens?: boolean }): number[]
  detokenize(ids: number[], opts?: { skipSpecialTokens?: boolean }): string
  tokenText(id: number): string
  applyChatTemplate(
    messages: ChatMessage[],
    opts?: { addGenerationPrompt?: boolean; kwargs?: Record<string, unknown> },
  ): string
  generate(req: GenerateRequest): AsyncIterable<GenerateEvent>
  stats(): EngineStats
  generationDefaults: SamplingOptions
  readonly tokenizer: Tokenizer
  readonly engine: NativeEngine
  dispose(): void
}

/** The model directory to use: the argument, else $MINICPM_MODEL, else the generated default model. */
export function resolveModelDir(dir: string | undefined, onProgress?: LoadOptions['onProgress']): string {
  return dir || process.env.MINICPM_MODEL || ensureDefaultModel(onProgress)
}

export async function loadModel(dir?: string, opts: LoadOptions = {}): Promise<Model> {
  const progress = opts.onProgress ?? (() => {})
  const facts = readModelDir(resolveModelDir(dir, progress))
  if (facts.randomWeights) {
    const label = facts.id === DEFAULT_MODEL_ID ? 'the default model' : facts.id
    process.stderr.write(`minicpm-edge: ${label} (${facts.dir}) has RANDOM weights: its output is meaningless\n`)
  }
  progress('weights', 0, 1)
  const native = NativeModel.load(facts.dir, { useMmap: opts.useMmap, nThreads: opts.nThreads, sparse: opts.sparse })
  try {
    progress('weights', 1, 1)
    const warnings = native.warnings()
    for (const w of warnings) process.stderr.write(`minicpm-edge: ${facts.id}: warning: ${w}\n`)
    progress('tokenizer', 0, 1)
    const tokenizer = await loadTokenizer(facts.dir, { cacheDir: join(cacheRoot(), 'tokenizers') })
    progress('tokenizer', 1, 1)
    progress('engine', 0, 1)
    // A model without a chat template still serves plain prompts; chat use reports why it cannot.
    const template = await ChatTemplate.fromDir(facts.dir).catch((e: Error) => e)
    const engine = new NativeEngine(native, {
      nThreads: opts.nThreads,
      nCtx: opts.nCtx,
      kvBytes: opts.kvBytes,
      kvDtype: opts.kvDtype,
      nBatchMax: opts.nBatchMax,
      nChunk: opts.nChunk,
      nQueueMax: opts.nQueueMax,
      poll: opts.poll,
    })
    progress('engine', 1, 1)
    const nativeInfo = native.info()
    const info: ModelInfo = {
      id: facts.id,
      dir: facts.dir,
      randomWeights: facts.randomWeights,
      nVocab: nativeInfo.nVocab,
      nCtx: opts.nCtx && opts.nCtx > 0 ? Math.min(opts.nCtx, nativeInfo.nCtxTrain) : nativeInfo.nCtxTrain,
      nCtxTrain: nativeInfo.nCtxTrain,
      nLayer: nativeInfo.nLayer,
      nEmbd: nativeInfo.nEmbd,
      weightDtype: nativeInfo.weightDtype,
      kvDtype: opts.kvDtype ?? DEFAULT_KV_DTYPE,
      nParams: nativeInfo.nParams,
      weightBytes: nativeInfo.weightBytes,
      eosTokenIds: nativeInfo.eosTokenIds,
      bosTokenId: nativeInfo.bosTokenId,
      backend: nativeInfo.backend,
      backendName: nativeInfo.backendName,
      sparseConfig: nativeInfo.sparseConfig,
      sparseAttention: nativeInfo.sparseAttention,
      quantizationConfig: nativeInfo.quantizationConfig,
      warnings,
    }
    const applyChatTemplate: Model['applyChatTemplate'] = (messages, o = {}) => {
      if (template instanceof Error) throw new Error(`${facts.id} has no usable chat template: ${template.message}`)
      return template.render(messages, { addGenerationPrompt: o.addGenerationPrompt ?? true, kwargs: o.kwargs })
    }
    const deps: GenerateDeps = {
      engine,
      tokenizer,
      defaults: facts.generationDefaults,
      nVocab: nativeInfo.nVocab,
      prefillTickMs: opts.prefillTickMs ?? PREFILL_TICK_MS,
      render: (req) =>
        applyChatTemplate(req.messages ?? [], {
          addGenerationPrompt: req.addGenerationPrompt,
          kwargs: req.chatTemplateKwargs,
        }),
    }
    const dispose = () => native.dispose() // disposes the engine first (a child of the model)
    return {
      info,
      tokenizer,
      engine,
      generationDefaults: facts.generationDefaults,
      tokenize: (text, o) => tokenizer.encode(text, o),
      detokenize: (ids, o) => tokenizer.decode(ids, o),
      tokenText: (id) => tokenizer.tokenText(id),
      applyChatTemplate,
      generate: (req) => generate(deps, req),
      stats: () => {
        const { undrained: _u, ...s } = engine.stats()
        return s
      },
      dispose,
      [Symbol.dispose]: dispose,
    }
  } catch (e) {
    native.dispose()
    throw e
  }
}
