/**
 * NativeEngine: the continuous-batching engine. submit() queues a request and returns at once; the engine
 * thread rings a doorbell (a threadsafe JSCallback carrying user_data, a uint64 request id and a count) when a
 * request has new events, and the listener registered with onReady() drains them with a short synchronous call.
 * Request ids are uint64_t in the ABI and numbers here: they count up from 1, and submit() refuses one that a
 * double cannot hold exactly, so every id a listener is keyed by converts back exactly.
 * MINICPM_FFI_POLL=1 replaces the doorbell with minicpm_engine_poll() on a short timer while requests live.
 */
import { JSCallback, ptr as addressOf, type Pointer } from 'bun:ffi'
import { check, int32Array, nativeError, NativeError } from './errors'
import { NativeHandle } from './handle'
import { cString, lib } from './library'
import { kvDtypeCode } from './context'
import type { NativeModel } from './model'
import {
  backendName,
  engineParamsLayout,
  engineStatsLayout,
  MAX_TOP_LOGPROBS,
  newStruct,
  readCString,
  readEvent,
  readStruct,
  requestInfoLayout,
  requestStates,
  samplingParamsLayout,
  structSizes,
  writeStruct,
  type KvDtype,
  type NativeEvent,
  type RequestState,
} from './structs'

const STATUS_NOT_FOUND = -6
const STATUS_INTERNAL = -100
const DRAIN_CAP = 64
const POLL_INTERVAL_MS = 1
const DOORBELL_CLOSE_DELAY_MS = 100
// Bun 1.4.5 busy-spins the JS thread (a whole core, measured) while a threadsafe JSCallback is the only thing
// keeping the event loop alive; any ref'd timer makes the loop block in epoll instead, and the ring still
// wakes it at once. On a 2-core machine that spin halved decode speed.
const LOOP_KEEPALIVE_MS = 1000

export interface NativeEngineOptions {
  nThreads?: number
  nBatchMax?: number
  nChunk?: number
  nCtx?: number
  nQueueMax?: number
  kvDtype?: KvDtype
  kvBytes?: number
  /** Prefix caching across requests (engine_params.prefix_cache); default on. */
  prefixCache?: boolean
  /** CPU kernels with exact f32 products (engine_params.exact_kernels; as MINICPM_KERNELS=exact). */
  exactKernels?: boolean
  /** Speculative decoding: a plain MiniCPM model with the target's vocabulary drafts token trees. */
  draft?: NativeModel
  /** Speculative decoding with an EAGLE head directory (MiniCPM4-8B-Eagle-FRSpec layout); not with draft. */
  draftHead?: string
  /** FR-Spec: freq_N.pt or an int32 file of token ids by frequency; the draft scores its first draftVocabSize. */
  draftVocab?: string
  draftVocabSize?: number
  draftNumIter?: number
  draftTopK?: number
  draftTreeSize?: number
  draftKvBytes?: number
  /** Overrides MINICPM_FFI_POLL: true = poll on a timer instead of the doorbell callback. */
  poll?: boolean
}

export interface NativeSampling {
  temperature?: number
  topP?: number
  minP?: number
  topK?: number
  repetitionPenalty?: number
  presencePenalty?: number
  frequencyPenalty?: number
  penaltyLastN?: number
  maxTokens?: number
  topLogprobs?: number
  logprobs?: boolean
  ignoreEos?: boolean
  /** false: this request does not use the engine's drafter */
  speculative?: boolean
  /** true: constrained; the request samples only after setMask() gave the allowed set of each token */
  masked?: boolean
  seed?: number
}

export interface NativeRequestInfo {
  state: RequestState
  nPrompt: number
  nPrefilled: number
  nGenerated: number
  /** Prompt tokens the first admission took from the prefix cache. */
  nCached: number
  tSubmitUs: number
  tAdmitUs: number
  tFirstTokenUs: number
  tEndUs: number
}

export interface NativeEngineStats {
  backend: string // 'cpu' | 'cuda'
  backendName: string // backend and kernel family, e.g. 'cpu avx512+amx'
  running: number
  waiting: number
  undrained: number
  kvTokensUsed: number
  kvTokensTotal: number
  steps: number
  promptTokens: number
  generatedTokens: number
  errors: number
  /** Prompt tokens looked up in the prefix cache (first admissions) and, of those, found. */
  prefixQueryTokens: number
  prefixHitTokens: number
  /** Idle cached KV blocks evicted to make room. */
  prefixEvictions: number
  /** KV slots of idle cached blocks (reusable; not in kvTokensUsed). */
  kvTokensCached: number
  /** 1 when the prefix cache is on. */
  prefixCache: number
  /** Speculative decoding: draft trees verified, draft nodes verified, drafts kept. */
  specVerifies: number
  specDrafted: number
  specAccepted: number
  /** [d - 1]: verifies that kept at least d drafts */
  specAtDepth: number[]
  forwardUs: number // time in forward passes since init
  attentionUs: number // of which in attention ops (dense and sparse)
  /** CUDA graphs: recorded, steps replayed, steps that fell back to direct launches. */
  graphCaptures: number
  graphReplays: number
  graphFallbacks: number
}

export class NativeEngine extends NativeHandle {
  readonly polling: boolean
  readonly #listeners: Map<number, () => void>
  readonly #drainBuf = new Uint8Array(new ArrayBuffer(DRAIN_CAP * structSizes.event))
  readonly #drainView = new DataView(this.#drainBuf.buffer)
  readonly #infoBuf = newStruct('request_info')
  readonly #idBuf = new BigUint64Array(1)
  #pollIds = new BigUint64Array(64)
  #pollTimer: ReturnType<typeof setTimeout> | null = null
  #keepAlive: ReturnType<typeof setInterval> | null = null

  constructor(model: NativeModel, opts: NativeEngineOptions = {}) {
    const l = lib()
    const params = newStruct('engine_params')
    l.minicpm_engine_default_params(params)
    // Path strings are read during minicpm_engine_init only; these buffers outlive that call.
    const headPath = opts.draftHead === undefined ? undefined : cString(opts.draftHead)
    const vocabPath = opts.draftVocab === undefined ? undefined : cString(opts.draftVocab)
    writeStruct(params, engineParamsLayout, {
      nThreads: opts.nThreads,
      nBatchMax: opts.nBatchMax,
      nChunk: opts.nChunk,
      nCtx: opts.nCtx,
      nQueueMax: opts.nQueueMax,
      kvDtype: opts.kvDtype === undefined ? undefined : kvDtypeCode(opts.kvDtype),
      kvBytes: opts.kvBytes,
      prefixCache: opts.prefixCache === undefined ? undefined : opts.prefixCache ? 1 : 0,
      exactKernels: opts.exactKernels === undefined ? undefined : opts.exactKernels ? 1 : 0,
      draftModel: opts.draft === undefined ? undefined : Number(opts.draft.ptr),
      draftNumIter: opts.draftNumIter,
      draftTopK: opts.draftTopK,
      draftTreeSize: opts.draftTreeSize,
      draftKvBytes: opts.draftKvBytes,
      draftHead: headPath === undefined ? undefined : Number(addressOf(headPath)),
      draftVocab: vocabPath === undefined ? undefined : Number(addressOf(vocabPath)),
      draftVocabSize: opts.draftVocabSize,
    })
    const out = new BigUint64Array(1)
    const status = l.minicpm_engine_init(model.ptr, params, new Uint8Array(out.buffer))
    const pathsRead = [headPath, vocabPath] // referenced until init has returned
    pathsRead.length = 0
    if (status !== 0 || out[0] === 0n) throw nativeError(status, 'cannot start engine')
    const ptr = Number(out[0]) as Pointer
    const polling = opts.poll ?? process.env.MINICPM_FFI_POLL === '1'
    // The doorbell only dispatches: events move through drain(), never through callback arguments.
    const listeners = new Map<number, () => void>()
    const doorbell = polling
      ? null
      : new JSCallback((_user: unknown, id: bigint) => listeners.get(Number(id))?.(), {
          args: ['ptr', 'u64', 'i32'],
          returns: 'void',
          threadsafe: true,
        })
    if (doorbell) {
      const st = l.minicpm_engine_set_notify(ptr, doorbell.ptr, null)
      if (st !== 0) {
        const err = nativeError(st, 'cannot install the engine doorbell')
        l.minicpm_engine_free(ptr)
        doorbell.close()
        throw err
      }
    }
    // The free closure keeps the callback alive until the engine thread that rings it has stopped; rings it
    // already queued to the JS thread still run (as no-ops) before the trampoline is released.
    super(
      'NativeEngine',
      ptr,
      (p) => {
        lib().minicpm_engine_free(p)
        if (doorbell) setTimeout(() => doorbell.close(), DOORBELL_CLOSE_DELAY_MS).unref()
      },
      model,
    )
    this.#listeners = listeners
    this.polling = polling
  }

  /** Queues a request; returns its id. Throws NativeError: queue_full, too_large or invalid_argument. */
  submit(
    tokens: ArrayLike<number>,
    sampling: NativeSampling = {},
    extra: { stopIds?: number[]; logitBias?: Record<number, number> } = {},
  ): number {
    const engine = this.guard()
    const l = lib()
    const tok = int32Array(tokens, 'tokens')
    const sp = newStruct('sampling_params')
    l.minicpm_sampling_default_params(sp)
    writeStruct(sp, samplingParamsLayout, encodeSampling(sampling))
    const stop = extra.stopIds && extra.stopIds.length > 0 ? int32Array(extra.stopIds, 'stopIds') : null
    const biasEntries = Object.entries(extra.logitBias ?? {})
    const biasIds =
      biasEntries.length > 0
        ? int32Array(
            biasEntries.map(([k]) => Number(k)),
            'logitBias ids',
          )
        : null
    const biasValues = biasEntries.length > 0 ? Float32Array.from(biasEntries, ([, v]) => v) : null
    const status = l.minicpm_engine_submit(
      engine,
      tok,
      tok.length,
      sp,
      stop,
      stop ? stop.length : 0,
      biasIds,
      biasValues,
      biasEntries.length,
      this.#idBuf,
    )
    if (status !== 0) throw nativeError(status, 'submit')
    const id = this.#idBuf[0]!
    if (id < 1n || id > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new NativeError(STATUS_INTERNAL, 'internal', `submit: request id ${id} is outside 1..2^53-1`)
    }
    return Number(id)
  }

  /** Moves every pending event of a request out of the engine (copied). After the finish event the id is gone. */
  drain(id: number): NativeEvent[] {
    const engine = this.guard()
    const l = lib()
    const events: NativeEvent[] = []
    for (;;) {
      const n = l.minicpm_engine_drain(engine, id, this.#drainBuf, DRAIN_CAP)
      if (n < 0) throw nativeError(n, `drain request ${id}`)
      for (let i = 0; i < n; i++) events.push(readEvent(this.#drainView, i))
      // A full buffer ending in the finish event has released the id: draining again would be NOT_FOUND.
      if (n < DRAIN_CAP || events[events.length - 1]!.finish !== 'none') break
    }
    const last = events[events.length - 1]
    if (last && last.finish !== 'none') this.offReady(id)
    return events
  }

  /** Cancels a request; false when the id is unknown or already released. */
  cancel(id: number): boolean {
    const status = lib().minicpm_engine_cancel(this.guard(), id)
    if (status === STATUS_NOT_FOUND) return false
    check(status, `cancel request ${id}`)
    return true
  }

  /**
   * The allowed set of a masked request's next token: bit i % 32 of bits[i / 32] = token i. The engine copies
   * it. False when the request is unknown or already finished.
   */
  setMask(id: number, bits: Uint32Array): boolean {
    const status = lib().minicpm_engine_set_mask(this.guard(), id, bits, bits.length)
    if (status === STATUS_NOT_FOUND) return false
    check(status, `set mask of request ${id}`)
    return true
  }

  requestInfo(id: number): NativeRequestInfo | null {
    const buf = this.#infoBuf
    const status = lib().minicpm_engine_request_info(this.guard(), id, buf)
    if (status === STATUS_NOT_FOUND) return null
    check(status, `info of request ${id}`)
    const { size: _size, state, ...rest } = readStruct(buf, requestInfoLayout)
    return { state: requestStates[state] ?? 'finished', ...rest }
  }

  stats(): NativeEngineStats {
    const buf = newStruct('engine_stats')
    check(lib().minicpm_engine_stats(this.guard(), buf), 'engine stats')
    const { size: _size, backend, ...rest } = readStruct(buf, engineStatsLayout)
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    const [at, , , n = 1] = engineStatsLayout.specAtDepth
    const specAtDepth = Array.from({ length: n }, (_, d) => Number(view.getBigUint64(at + 8 * d, true)))
    return {
      backend: backendName(backend),
      backendName: readCString(buf, engineStatsLayout.backendName),
      ...rest,
      specAtDepth,
    }
  }

  /**
   * Calls fn on the JS thread whenever events for id are pending (until its finish event is drained).
   * Register it in the same tick as submit(): the doorbell rings only on the empty -> pending transition.
   */
  onReady(id: number, fn: () => void): void {
    this.guard()
    this.#listeners.set(id, fn)
    if (this.polling) this.#schedulePoll()
    else this.#keepAlive ??= setInterval(() => {}, LOOP_KEEPALIVE_MS)
  }

  /** Stops calling the listener of id (the request itself keeps running: cancel it separately). */
  offReady(id: number): void {
    this.#listeners.delete(id)
    if (this.#listeners.size === 0) this.#stopKeepAlive()
  }

  #stopKeepAlive(): void {
    if (this.#keepAlive) clearInterval(this.#keepAlive)
    this.#keepAlive = null
  }

  protected override beforeFree(): void {
    // Wake every waiting listener once so that its loop sees the engine is gone instead of waiting forever.
    const waiting = [...this.#listeners.values()]
    this.#listeners.clear()
    this.#stopKeepAlive()
    for (const fn of waiting) fn()
    if (this.#pollTimer) clearTimeout(this.#pollTimer)
    this.#pollTimer = null
  }

  #schedulePoll(): void {
    if (this.#pollTimer || this.disposed) return
    this.#pollTimer = setTimeout(() => {
      this.#pollTimer = null
      if (this.disposed || this.#listeners.size === 0) return
      this.#pollOnce()
      if (this.#listeners.size > 0) this.#schedulePoll()
    }, POLL_INTERVAL_MS)
  }

  #pollOnce(): void {
    const engine = this.guard()
    if (this.#pollIds.length < this.#listeners.size) this.#pollIds = new BigUint64Array(this.#listeners.size * 2)
    const n = lib().minicpm_engine_poll(engine, this.#pollIds, this.#pollIds.length)
    if (n < 0) throw nativeError(n, 'poll')
    for (let i = 0; i < n; i++) this.#listeners.get(Number(this.#pollIds[i]!))?.()
  }
}

function encodeSampling(s: NativeSampling): Record<string, number | undefined> {
  if (s.topLogprobs !== undefined && (s.topLogprobs < 0 || s.topLogprobs > MAX_TOP_LOGPROBS)) {
    throw new NativeError(-1, 'invalid_argument', `topLogprobs must be 0..${MAX_TOP_LOGPROBS}`)
  }
  const flag = (b: boolean | undefined) => (b === undefined ? undefined : b ? 1 : 0)
  return {
    temperature: s.temperature,
    topP: s.topP,
    minP: s.minP,
    topK: s.topK,
    repetitionPenalty: s.repetitionPenalty,
    presencePenalty: s.presencePenalty,
    frequencyPenalty: s.frequencyPenalty,
    penaltyLastN: s.penaltyLastN,
    maxTokens: s.maxTokens,
    topLogprobs: s.topLogprobs,
    logprobs: flag(s.logprobs),
    ignoreEos: flag(s.ignoreEos),
    speculative: flag(s.speculative),
    masked: flag(s.masked),
    seed: s.seed,
  }
}
