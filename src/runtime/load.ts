/**
 * loadModel(): a model directory -> native model + tokenizer + chat template + engine, behind the Model
 * interface that routes/ and the CLI use.
 */
import { closeSync, existsSync, openSync, readSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { NativeEngine, NativeModel, type Backend, type KvDtype, type QuantizeType, type SparseMode } from '../../ffi/index'
import { ChatTemplate, ChatTemplateBudgetError, ChatTemplateError } from '../chat/index'
import { isHubId } from '../hub/cache'
import { pull } from '../hub/pull'
import { resolveToolFormat, type ToolFormat, type ToolMessage } from '../chat/tools/index'
import { loadTokenizer, type Tokenizer } from '../tokenizer/index'
import type { ChatMessage, EngineStats, GenerateEvent, GenerateRequest, ModelInfo, SamplingOptions } from '../types'
import { cacheRoot, DEFAULT_MODEL_ID, ensureDefaultModel } from './default-model'
import { generate, PREFILL_TICK_MS, type GenerateDeps } from './generate'
import { readModelDir } from './model-dir'
import { TextWorker } from './text-worker'

/** Texts longer than this (UTF-16 units) and id lists longer than this are tokenized in the text worker. */
export const OFFLOAD_CHARS = 64 * 1024
export const OFFLOAD_IDS = 32 * 1024
const TOKENIZE_BUDGET_MS = 120_000

/** KV cache element types the engine takes. Without one it uses bf16 (minicpm.h, engine_params.kv_dtype). */
export const KV_DTYPES = ['f32', 'bf16', 'f16'] as const satisfies readonly KvDtype[]
export const DEFAULT_KV_DTYPE: KvDtype = 'bf16'
/** Where the engine runs; 'auto' picks CUDA when the library was built with it and a GPU is present. */
export const BACKENDS = ['auto', 'cpu', 'cuda'] as const satisfies readonly Backend[]

export interface LoadOptions {
  nThreads?: number
  nCtx?: number
  kvBytes?: number
  kvDtype?: KvDtype
  backend?: Backend
  /** CUDA: bytes of the device memory arena (`--gpu-memory`); default 90% of the free device memory (half on Jetson). */
  deviceMemory?: number
  /** CUDA: replay decode steps as CUDA graphs (`--cuda-graphs on|off`); default true. */
  cudaGraphs?: boolean
  nBatchMax?: number
  nChunk?: number
  nQueueMax?: number
  /** Tool-call format (`--tool-format`): 'minicpm', or 'none'; default from the chat template, else the family. */
  toolFormat?: string
  /** Reuse the KV of prompt prefixes across requests (default true; --no-prefix-cache). */
  prefixCache?: boolean
  /** CPU kernels with exact f32 products (no bf16 rounding of activations; as MINICPM_KERNELS=exact). */
  exact?: boolean
  useMmap?: boolean
  /** Quantize a BF16/F16/F32 checkpoint's weights at load (round to nearest): q8 or q4. */
  quantize?: QuantizeType
  /** Input features per quantization scale (a positive multiple of 32; default 128). */
  quantGroupSize?: number
  /** Quantize the LM head / tied embedding too (default true). */
  quantizeHead?: boolean
  /**
   * Speculative decoding: a draft directory next to the target, drafting EAGLE-2 token trees; greedy output is
   * unchanged. An EAGLE head (MiniCPM4-8B-Eagle-FRSpec layout, detected from its config or its tensors) drafts
   * from the target's hidden states; a plain MiniCPM model with the target's vocabulary (e.g. 0.5B for 8B) drafts
   * on its own.
   */
  draft?: string
  /** FR-Spec: a freq_N.pt or int32 file of token ids by frequency; the draft scores its first draftVocabSize. */
  draftVocab?: string
  draftVocabSize?: number
  /** Draft tree shape (defaults as CPM.cu's CLI: 2 levels, top-10, 12 verified rows). */
  draftNumIter?: number
  draftTopK?: number
  draftTreeSize?: number
  /** InfLLM v2 sparse attention: 'auto' (default) as config.json says, 'off' dense, 'hf' / 'v2' on (the model
   * card's sparse_config when config.json has none). */
  sparse?: SparseMode
  /** Overrides MINICPM_FFI_POLL for this model's engine. */
  poll?: boolean
  /** How often a request waiting for its first token reports prefill progress; default 100 ms. */
  prefillTickMs?: number
  /** Time budget of one chat template rendering (it runs in a worker that is terminated past it); default 2000 ms. */
  templateBudgetMs?: number
  /** Output budget of one chat template rendering, in characters; default 16 Mi. */
  templateMaxChars?: number
  /** Load warnings (pool smaller than the context, a broken template); default stderr. */
  warn?: (line: string) => void
  /** Progress of long steps; `unit` 'bytes' when done/total count bytes (a download). */
  onProgress?: (phase: string, done: number, total: number, unit?: 'bytes') => void
  /** Notices (random weights, download steps); default: lines on stderr. */
  onLog?: (line: string) => void
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
  /** Like tokenize, off the main thread for large texts; withPieces adds each token's text. */
  tokenizeAsync(
    text: string,
    opts?: { addSpecialTokens?: boolean; withPieces?: boolean },
  ): Promise<{ ids: number[]; pieces?: string[] }>
  /**
   * The JSON text of the token list (ids, or {id, piece} with withPieces) and its length: for large texts
   * both the tokenizing and the stringify happen in the text worker.
   */
  tokenizeJson(text: string, opts?: { addSpecialTokens?: boolean; withPieces?: boolean }): Promise<{ count: number; json: string }>
  /** Like detokenize, off the main thread for long id lists. */
  detokenizeAsync(ids: number[], opts?: { skipSpecialTokens?: boolean }): Promise<string>
  generate(req: GenerateRequest): AsyncIterable<GenerateEvent>
  stats(): EngineStats
  /** Renders and parses tools and tool calls; null when the model takes no tools. */
  toolFormat: ToolFormat | null
  generationDefaults: SamplingOptions
  readonly tokenizer: Tokenizer
  readonly engine: NativeEngine
  dispose(): void
}

/**
 * The model directory to use: the argument, else $MINICPM_MODEL, else the generated default model. A hub id
 * (`org/name`) that is not a local path is pulled into the HF cache first (src/hub/pull.ts), or found there.
 */
export async function resolveModelDir(
  dir: string | undefined,
  onProgress?: LoadOptions['onProgress'],
  onLog: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Promise<string> {
  const spec = dir || process.env.MINICPM_MODEL
  if (!spec) return ensureDefaultModel(onProgress)
  if (existsSync(spec)) {
    if (!existsSync(join(spec, 'config.json')) && !isHubId(spec)) {
      throw new Error(
        `${resolve(spec)} is not a model directory: config.json is missing (a model directory holds config.json, ` +
          `*.safetensors and tokenizer files, as on the hub; to download one: minicpm-edge pull openbmb/MiniCPM4-0.5B)`,
      )
    }
    if (existsSync(join(spec, 'config.json'))) return spec
  }
  if (isHubId(spec)) return pull(spec, { onProgress, log: onLog })
  throw new Error(`${spec}: no such model directory (a hub id looks like org/name, e.g. openbmb/MiniCPM4-0.5B)`)
}

export async function loadModel(dir?: string, opts: LoadOptions = {}): Promise<Model> {
  const progress = opts.onProgress ?? (() => {})
  const log = opts.onLog ?? ((line: string) => process.stderr.write(`${line}\n`))
  const facts = readModelDir(await resolveModelDir(dir, progress, log))
  if (facts.randomWeights) {
    const label = facts.id === DEFAULT_MODEL_ID ? 'the default model' : facts.id
    log(`minicpm-edge: ${label} (${facts.dir}) has RANDOM weights: its output is meaningless`)
  }
  for (const w of facts.warnings) (opts.warn ?? ((l: string) => process.stderr.write(`${l}\n`)))(`minicpm-edge: WARNING: ${w}`)
  progress('weights', 0, 1)
  const native = NativeModel.load(facts.dir, {
    useMmap: opts.useMmap,
    nThreads: opts.nThreads,
    backend: opts.backend,
    deviceMemory: opts.deviceMemory,
    cudaGraphs: opts.cudaGraphs,
    quantize: opts.quantize,
    quantGroupSize: opts.quantGroupSize,
    quantizeHead: opts.quantizeHead,
    sparse: opts.sparse,
  })
  let draft: NativeModel | undefined
  let draftHead: string | undefined
  try {
    if (opts.draft) {
      const d = readModelDir(opts.draft)
      if (draftKind(d.config, d.dir) === 'eagle') {
        draftHead = d.dir // loaded by the engine next to the target, whose embedding and LM head it shares
      } else {
        progress('draft', 0, 1)
        draft = NativeModel.load(d.dir, { useMmap: opts.useMmap, nThreads: opts.nThreads })
        progress('draft', 1, 1)
      }
    }
    if (opts.draftVocab && !opts.draft) throw new Error('--draft-vocab needs --draft (an EAGLE head or a draft model)')
    progress('weights', 1, 1)
    if (opts.quantize) {
      const ni = native.info()
      process.stderr.write(
        `minicpm-edge: ${facts.id}: weights quantized to ${ni.weightDtype} at load: ` +
          `${(ni.weightBytes / 1e6).toFixed(1)} MB, ${((ni.weightBytes * 8) / ni.nParams).toFixed(2)} bits/weight\n`,
      )
    }
    const warnings = native.warnings()
    for (const w of warnings) (opts.warn ?? ((l: string) => process.stderr.write(`${l}\n`)))(`minicpm-edge: WARNING: ${facts.id}: ${w}`)
    progress('tokenizer', 0, 1)
    const tokenizer = await loadTokenizer(facts.dir, { cacheDir: join(cacheRoot(), 'tokenizers') })
    progress('tokenizer', 1, 1)
    progress('engine', 0, 1)
    // A model without a chat template still serves plain prompts; chat use reports why it cannot.
    let template: ChatTemplate | Error = await ChatTemplate.fromDir(facts.dir).catch((e: Error) => e)
    const toolFormat = resolveToolFormat({
      configured: opts.toolFormat,
      template: template instanceof Error ? null : template.source,
      modelType: typeof facts.config.model_type === 'string' ? facts.config.model_type : undefined,
    })
    const engine = new NativeEngine(native, {
      nThreads: opts.nThreads,
      nCtx: opts.nCtx,
      kvBytes: opts.kvBytes,
      kvDtype: opts.kvDtype,
      nBatchMax: opts.nBatchMax,
      nChunk: opts.nChunk,
      nQueueMax: opts.nQueueMax,
      prefixCache: opts.prefixCache,
      exactKernels: opts.exact,
      poll: opts.poll,
      draft,
      draftHead,
      draftVocab: opts.draftVocab,
      draftVocabSize: opts.draftVocabSize,
      draftNumIter: opts.draftNumIter,
      draftTopK: opts.draftTopK,
      draftTreeSize: opts.draftTreeSize,
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
      bitsPerWeight: (nativeInfo.weightBytes * 8) / Math.max(1, nativeInfo.nParams),
      eosTokenIds: nativeInfo.eosTokenIds,
      bosTokenId: nativeInfo.bosTokenId,
      backend: nativeInfo.backend,
      backendName: nativeInfo.backendName,
      sparseConfig: nativeInfo.sparseConfig,
      sparseAttention: nativeInfo.sparseAttention,
      quantizationConfig: nativeInfo.quantizationConfig,
      warnings,
      toolFormat: toolFormat?.name ?? null,
    }
    const warn = opts.warn ?? ((line: string) => process.stderr.write(`${line}\n`))
    const kvTokens = engine.stats().kvTokensTotal
    if (kvTokens < info.nCtx) {
      warn(
        `minicpm-edge: WARNING: the KV cache pool holds ${kvTokens} tokens, fewer than the context of ${info.nCtx}: ` +
          'requests that need more are refused or cut (finish_reason length, cause kv_cache); raise --kv-bytes',
      )
    }
    const worker = new TextWorker()
    const budgetMs = opts.templateBudgetMs ?? 2000
    const maxChars = opts.templateMaxChars ?? 16 * 1024 * 1024
    const noTemplate = (t: Error) => new Error(`${facts.id} has no usable chat template: ${t.message}`)
    const renderAsync = (messages: ChatMessage[], addGenerationPrompt: boolean, kwargs?: Record<string, unknown>) => {
      const t = template
      if (t instanceof Error) return Promise.reject(noTemplate(t))
      if (t.source === null) return Promise.resolve(t.render(messages)) // throws: no template
      return worker.run<string>(
        { op: 'render', source: t.source, config: t.config, origin: t.origin, messages, addGenerationPrompt, kwargs, maxChars },
        budgetMs,
        () => new ChatTemplateBudgetError(`the chat template of ${facts.id} did not finish within ${budgetMs} ms`),
      )
    }
    // A template must render a two-turn conversation within its budget, or chat is off (with the reason).
    if (!(template instanceof Error) && template.available) {
      const turns: ChatMessage[] = [
        { role: 'user', content: 'Hello' },
        { role: 'assistant', content: 'Hi' },
      ]
      const failed = await renderAsync(turns, true).then(
        (out) => (typeof out === 'string' && out.includes('Hello') ? null : new Error('it dropped the messages')),
        (e: Error) => e,
      )
      if (failed) {
        template = new ChatTemplateError(`it failed the load check (a two-turn conversation): ${failed.message}`)
        warn(`minicpm-edge: WARNING: ${facts.id}: chat disabled, the chat template ${template.message.slice(3)}`)
      }
    }
    const applyChatTemplate: Model['applyChatTemplate'] = (messages, o = {}) => {
      if (template instanceof Error) throw noTemplate(template)
      return template.render(messages, { addGenerationPrompt: o.addGenerationPrompt ?? true, kwargs: o.kwargs })
    }
    const tokenizerDir = { dir: facts.dir, cacheDir: join(cacheRoot(), 'tokenizers') }
    const tokenizeTimeout = () => new Error(`tokenizing did not finish within ${TOKENIZE_BUDGET_MS} ms`)
    const encode: GenerateDeps['encode'] = async (text, o) => {
      if (text.length <= OFFLOAD_CHARS) {
        return o.split ? tokenizer.encodeText(text, o) : tokenizer.encode(text, o)
      }
      const r = await worker.run<{ ids: Int32Array }>(
        { op: 'encode', ...tokenizerDir, text, addSpecialTokens: o.addSpecialTokens, split: o.split },
        TOKENIZE_BUDGET_MS,
        tokenizeTimeout,
      )
      return Array.from(r.ids)
    }
    const deps: GenerateDeps = {
      engine,
      tokenizer,
      encode,
      defaults: facts.generationDefaults,
      nVocab: nativeInfo.nVocab,
      nCtx: info.nCtx,
      prefillTickMs: opts.prefillTickMs ?? PREFILL_TICK_MS,
      render: async (req) => {
        const messages = req.messages ?? []
        const withTools =
          (req.tools?.length ?? 0) > 0 || messages.some((m) => m.role === 'tool' || (m.toolCalls?.length ?? 0) > 0)
        if (!withTools) return renderAsync(messages, req.addGenerationPrompt ?? true, req.chatTemplateKwargs)
        // Tools are rendered by the project's own tool format (not the model's template): no worker needed.
        if (!toolFormat) throw new Error(`${facts.id} has no tool format: its chat template cannot take tools`)
        return toolFormat.render(messages.map(toToolMessage), req.tools ?? [], {
          addGenerationPrompt: req.addGenerationPrompt ?? true,
        })
      },
    }
    const dispose = () => {
      worker.close()
      native.dispose() // disposes the engine first (a child of the model)
      draft?.dispose() // after the engine that drafts with it
    }
    return {
      info,
      tokenizer,
      engine,
      generationDefaults: facts.generationDefaults,
      tokenize: (text, o) => tokenizer.encode(text, o),
      detokenize: (ids, o) => tokenizer.decode(ids, o),
      tokenizeAsync: async (text, o = {}) => {
        const addSpecialTokens = o.addSpecialTokens ?? true
        if (text.length <= OFFLOAD_CHARS) {
          const ids = tokenizer.encode(text, { addSpecialTokens })
          return { ids, ...(o.withPieces ? { pieces: ids.map((id) => tokenizer.tokenText(id)) } : {}) }
        }
        const r = await worker.run<{ ids: Int32Array; pieces?: string[] }>(
          { op: 'encode', ...tokenizerDir, text, addSpecialTokens, split: false, withPieces: o.withPieces },
          TOKENIZE_BUDGET_MS,
          tokenizeTimeout,
        )
        return { ids: Array.from(r.ids), ...(r.pieces ? { pieces: r.pieces } : {}) }
      },
      tokenizeJson: async (text, o = {}) => {
        const addSpecialTokens = o.addSpecialTokens ?? true
        if (text.length <= OFFLOAD_CHARS) {
          const ids = tokenizer.encode(text, { addSpecialTokens })
          const list = o.withPieces ? ids.map((id) => ({ id, piece: tokenizer.tokenText(id) })) : ids
          return { count: ids.length, json: JSON.stringify(list) }
        }
        return worker.run<{ count: number; json: string }>(
          { op: 'encode', ...tokenizerDir, text, addSpecialTokens, split: false, withPieces: o.withPieces, json: true },
          TOKENIZE_BUDGET_MS,
          tokenizeTimeout,
        )
      },
      detokenizeAsync: async (ids, o = {}) => {
        if (ids.length <= OFFLOAD_IDS) return tokenizer.decode(ids, o)
        for (const id of ids) tokenizer.tokenText(id) // a RangeError naming a bad id, before any transfer
        return worker.run<string>(
          { op: 'decode', ...tokenizerDir, ids: Int32Array.from(ids), skipSpecialTokens: o.skipSpecialTokens ?? false },
          TOKENIZE_BUDGET_MS,
          tokenizeTimeout,
        )
      },
      tokenText: (id) => tokenizer.tokenText(id),
      applyChatTemplate,
      generate: (req) => generate(deps, req),
      toolFormat,
      stats: () => {
        const { undrained: _u, ...s } = engine.stats()
        return {
          ...s,
          specMeanAcceptLength: s.specVerifies > 0 ? 1 + s.specAccepted / s.specVerifies : 0,
          specDepthAcceptance: s.specAtDepth.map((n) => (s.specVerifies > 0 ? n / s.specVerifies : 0)),
        }
      },
      dispose,
      [Symbol.dispose]: dispose,
    }
  } catch (e) {
    native.dispose()
    draft?.dispose()
    throw e
  }
}

function toToolMessage(m: ChatMessage): ToolMessage {
  const content = typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('\n')
  return {
    role: m.role === 'developer' ? 'system' : m.role,
    content,
    ...(m.toolCalls ? { toolCalls: m.toolCalls } : {}),
    ...(m.reasoning ? { reasoning: m.reasoning } : {}),
  }
}

/**
 * 'eagle' for an EAGLE draft head directory (its config names Eagle or carries eagle_config, or, given the
 * directory, its model.safetensors or pytorch_model.bin holds the head's fc.weight, or its Marlin
 * model_gptq.safetensors fc.qweight), else 'llm'.
 */
export function draftKind(config: Record<string, unknown>, dir?: string): 'eagle' | 'llm' {
  const names = JSON.stringify([config.architectures ?? '', config.model_type ?? '', config.auto_map ?? ''])
  if (/eagle/i.test(names) || config.eagle_config !== undefined) return 'eagle'
  if (dir === undefined) return 'llm'
  const tensors = new Set([...safetensorsNames(join(dir, 'model.safetensors')), ...safetensorsNames(join(dir, 'model_gptq.safetensors'))])
  const fc = tensors.has('fc.weight') || tensors.has('fc.qweight') || torchBinKeys(join(dir, 'pytorch_model.bin'), 'fc.weight')
  return fc ? 'eagle' : 'llm'
}

/**
 * Whether a torch.save file pickles the string key (BINUNICODE: 'X', u32 length, UTF-8): data.pkl is the archive's
 * first member, stored uncompressed, so a state dict's keys lie in its first bytes. False when unreadable.
 */
function torchBinKeys(path: string, key: string): boolean {
  try {
    const fd = openSync(path, 'r')
    try {
      const head = Buffer.alloc(1 << 20)
      const n = readSync(fd, head, 0, head.length, 0)
      const k = Buffer.from(key, 'utf8')
      const len = Buffer.alloc(4)
      len.writeUInt32LE(k.length)
      return head.subarray(0, n).includes(Buffer.concat([Buffer.from('X'), len, k]))
    } finally {
      closeSync(fd)
    }
  } catch {
    return false
  }
}

/** Tensor names in a safetensors header (8-byte little-endian length + JSON); empty when unreadable. */
function safetensorsNames(path: string): Set<string> {
  try {
    const fd = openSync(path, 'r')
    try {
      const len = Buffer.alloc(8)
      readSync(fd, len, 0, 8, 0)
      const n = Number(len.readBigUInt64LE(0))
      if (n <= 0 || n > 100_000_000) return new Set()
      const head = Buffer.alloc(n)
      readSync(fd, head, 0, n, 8)
      return new Set(Object.keys(JSON.parse(head.toString('utf8')) as Record<string, unknown>))
    } finally {
      closeSync(fd)
    }
  } catch {
    return new Set()
  }
}
