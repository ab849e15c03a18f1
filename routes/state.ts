/**
 * @module
 * What every route shares: the model slot (usable while the model is still loading), the bound on
 * generations in flight, the metrics, and `startGeneration`, the one place a route starts engine work.
 */

import type { Model } from '../src/runtime/load.ts'
import type { GenerateEvent, GenerateRequest } from '../src/types.ts'
import { ApiError, overloaded, toApiError, unavailable } from './errors.ts'
import { requestContext } from './access-log.ts'
import { createServerMetrics, type ServerMetrics } from './server-metrics.ts'
import { shutdownError, type Shutdown } from './shutdown.ts'

/** The part of the runtime's `Model` the server uses (structural, so tests can pass a fake). */
export type ServedModel = Pick<
  Model,
  | 'info'
  | 'tokenize'
  | 'detokenize'
  | 'tokenizeAsync'
  | 'tokenizeJson'
  | 'detokenizeAsync'
  | 'tokenText'
  | 'applyChatTemplate'
  | 'generate'
  | 'stats'
  | 'toolFormat'
>

/** Options shared by all routes; see createApp for defaults. */
export interface StateOptions {
  /**
   * One line per request at its last byte (start time, id, method, path, status, duration, time to headers,
   * prompt/completion tokens, finish reason), and warnings about a request; unset: silent.
   */
  log?: (line: string) => void
  /** The model, or the promise of it while it loads (health answers 503 until it resolves). */
  model: ServedModel | Promise<ServedModel>
  /** Extra id accepted in `model` fields and listed first in /v1/models. */
  servedModelName?: string
  /** Most generations in flight (running + waiting) before 429; default 128. */
  maxInFlight?: number
  /** Interval of `: ping` comments before the first token of a stream; default 1000 ms. */
  pingIntervalMs?: number
  /** Called for a generation once the engine accepted it (the server lifts its idle timeout there). */
  onLongRequest?: (req: Request) => void
  /** A stream whose client reads nothing for this long is cancelled; default 30000 ms. */
  stallTimeoutMs?: number
  /** Open connections and requests, for /metrics (the server's view; absent under app.request()). */
  connections?: () => { open: number; requests: number }
  /** Receives the metrics once created (the server counts refused connections into them). */
  onMetrics?: (m: ServerMetrics) => void
  /** Set by startServer: new requests are refused while draining, running ones cancelled at its end. */
  shutdown?: Shutdown
}

export class AppState {
  model: ServedModel | null = null
  loadError: Error | null = null
  inFlight = 0
  readonly maxInFlight: number
  readonly pingIntervalMs: number
  readonly stallTimeoutMs: number
  readonly connections: StateOptions['connections']
  readonly metrics: ServerMetrics
  readonly created = Math.floor(Date.now() / 1000)
  readonly servedName = () => this.opts.servedModelName

  constructor(readonly opts: StateOptions) {
    this.maxInFlight = opts.maxInFlight ?? 128
    this.pingIntervalMs = opts.pingIntervalMs ?? 1000
    this.stallTimeoutMs = opts.stallTimeoutMs ?? 30_000
    this.connections = opts.connections
    this.metrics = createServerMetrics(this)
    opts.onMetrics?.(this.metrics)
    if (opts.model instanceof Promise) {
      opts.model.then(
        (m) => (this.model = m),
        (e) => (this.loadError = e instanceof Error ? e : new Error(String(e))),
      )
    } else {
      this.model = opts.model
    }
  }

  /** The loaded model, or a 503 (with retry-after while loading). */
  get(): ServedModel {
    if (this.model) return this.model
    if (this.loadError) {
      throw new ApiError(
        503,
        `model failed to load: ${this.loadError.message}`,
        'unavailable_error',
      )
    }
    throw unavailable('Loading model', 2)
  }

  /** Ids a request's `model` field may name. */
  modelIds(): string[] {
    const ids = [this.get().info.id]
    if (this.opts.servedModelName && this.opts.servedModelName !== ids[0]) {
      ids.unshift(this.opts.servedModelName)
    }
    return ids
  }

  /** 404 model_not_found unless `model` is absent (accepted leniently) or a served id. */
  checkModel(model: string | null | undefined): string {
    const ids = this.modelIds()
    if (model == null || model === '') return ids[0]!
    if (!ids.includes(model)) {
      throw new ApiError(
        404,
        `The model '${model}' does not exist; this server serves ${ids.map((i) => `'${i}'`).join(', ')}`,
        'invalid_request_error',
        'model',
        'model_not_found',
      )
    }
    return model
  }
}

/** A started generation: the prompt size the engine accepted and the rest of its events. */
export interface Generation {
  promptTokens: number
  events: AsyncGenerator<GenerateEvent>
  /** Cancels in the engine (idempotent); also done when `events` is closed early. */
  cancel(): void
}

/**
 * Submits `req` and waits for the engine to accept it, so that queue-full, too-large and bad-token
 * errors become a proper HTTP status before any response header is sent. `signal` is the client's
 * disconnect; either it or `cancel()` aborts the request in the engine, including during prefill.
 * Every accepted generation ends in exactly one `request_success_total{finished_reason}` increment
 * and one e2e observation, whichever way it ends (finish event, cancel, client gone before the
 * first event was read). Once accepted, `raw` (the HTTP request) may idle: onLongRequest lifts the
 * server's idle timeout for it, never before the body was read and the engine took the request.
 */
export async function startGeneration(
  state: AppState,
  req: GenerateRequest,
  signal: AbortSignal,
  raw?: Request,
): Promise<Generation> {
  const model = state.get()
  if (state.inFlight >= state.maxInFlight) {
    throw overloaded(`too many requests in flight (${state.inFlight}), retry later`)
  }
  const ac = new AbortController()
  const onClientAbort = () => ac.abort()
  signal.addEventListener('abort', onClientAbort)
  if (signal.aborted) ac.abort()
  const shutdown = state.opts.shutdown?.signal
  shutdown?.addEventListener('abort', onClientAbort)
  if (shutdown?.aborted) ac.abort()
  const rec = requestContext.getStore()
  state.inFlight++
  const t0 = performance.now()
  const m = state.metrics
  let released = false
  let ended = false
  /** The one terminal count of an accepted generation. */
  const end = (reason: string) => {
    if (ended) return
    ended = true
    m.finished.inc(1, { finished_reason: reason })
    m.e2e.observe((performance.now() - t0) / 1000)
  }
  const release = () => {
    if (released) return
    released = true
    signal.removeEventListener('abort', onClientAbort)
    shutdown?.removeEventListener('abort', onClientAbort)
    state.inFlight--
  }
  const it = model.generate({ ...req, signal: ac.signal })[Symbol.asyncIterator]()
  let first: IteratorResult<GenerateEvent>
  try {
    first = await it.next()
  } catch (e) {
    release()
    throw toApiError(e)
  }
  if (raw) state.opts.onLongRequest?.(raw)
  const pending = first.done ? null : first.value
  const promptTokens =
    pending?.type === 'start'
      ? pending.promptTokens
      : pending?.type === 'finish'
        ? pending.usage.promptTokens
        : 0
  if (rec) rec.promptTokens += promptTokens
  let started = false
  const events = track(
    state,
    it,
    pending?.type === 'start' ? null : pending,
    t0,
    ac,
    () => {
      release()
      end('cancelled')
    },
    end,
    () => {
      started = true
    },
    (ev) => {
      if (!rec) return
      if (ev.type === 'delta') rec.completionTokens += ev.tokens.length
      else if (ev.type === 'finish') rec.finishReason = ev.reason
    },
    () => shutdown?.aborted === true && !signal.aborted,
  )
  const cancel = () => {
    ac.abort()
    // A generator whose body never ran has no finally to run: release here instead.
    if (!started) {
      release()
      end('cancelled')
      void it.return?.()
    }
  }
  // The client left before the route read a single event (its generator never started).
  ac.signal.addEventListener('abort', () => queueMicrotask(() => !started && cancel()), { once: true })
  return { promptTokens, events, cancel }
}

async function* track(
  state: AppState,
  it: AsyncIterator<GenerateEvent>,
  pending: GenerateEvent | null,
  t0: number,
  ac: AbortController,
  release: () => void,
  end: (reason: string) => void,
  onStart: () => void,
  account: (ev: GenerateEvent) => void,
  cutByShutdown: () => boolean,
): AsyncGenerator<GenerateEvent> {
  onStart()
  const m = state.metrics
  let last = 0
  let finished = false
  const observe = (ev: GenerateEvent) => {
    account(ev)
    // Cancelled by the shutdown rather than by the client: the stream ends with an error frame.
    if (ev.type === 'finish' && ev.reason === 'cancelled' && cutByShutdown()) {
      finished = true
      throw shutdownError()
    }
    const now = performance.now()
    if (ev.type === 'delta' && ev.tokens.length > 0) {
      if (last === 0) m.ttft.observe((now - t0) / 1000)
      else for (const _ of ev.tokens) m.itl.observe((now - last) / 1000 / ev.tokens.length)
      last = now
      m.generationTokens.inc(ev.tokens.length)
    } else if (ev.type === 'finish') {
      finished = true
      m.promptTokens.inc(ev.usage.promptTokens)
      end(ev.reason)
      m.queueTime.observe(ev.timings.queueMs / 1000)
      if (ev.reason === 'error') m.errors.inc(1, { type: 'engine_error' })
    }
  }
  try {
    if (pending) {
      observe(pending)
      yield pending
    }
    for (;;) {
      const r = await it.next()
      if (r.done) break
      observe(r.value)
      yield r.value
    }
  } finally {
    if (!finished) ac.abort()
    release() // counts 'cancelled' unless a finish event was counted
    await it.return?.()
  }
}
