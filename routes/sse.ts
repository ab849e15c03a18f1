/**
 * @module
 * Event streams for the generation routes: SSE (`data: {json}\n\n`, `: ping` comments) or NDJSON,
 * written through a ReadableStream so each frame is one chunk. The client's disconnect (request
 * signal or the body being cancelled) aborts one AbortController that the generation listens to.
 *
 * Backpressure: the stream queues at most STREAM_HIGH_WATER_BYTES beyond what Bun has pulled into the
 * socket (Bun pulls only while the socket takes data). Producers `await sink.ready()` before each event,
 * so a client that does not read pauses its generation's delivery; one that makes no progress for
 * `stallTimeoutMs` is cancelled (its KV freed) and counted in `minicpm:streams_stalled_total`.
 */

import type { Context } from 'hono'
import { toApiError } from './errors.ts'
import type { AppState } from './state.ts'

export type Framing = 'sse' | 'ndjson'

export interface EventSink {
  /** One event: an SSE `data:` frame or one NDJSON line. Dropped once the client is gone. */
  send(obj: unknown): void
  /** Raw text (the SSE `data: [DONE]` terminator). */
  raw(text: string): void
  /** Resolves once the client has room for more (at once unless it stopped reading), or is gone. */
  ready(): Promise<void>
  /** Keepalive frames every `ms` until stopPings(): idle proxies and Bun's idle timeout stay quiet. */
  startPings(ms: number): void
  stopPings(): void
  readonly closed: boolean
}

/** The client's disconnect as one signal: the request's own signal, plus the body being cancelled. */
export function clientAbort(c: Context): AbortController {
  const ac = new AbortController()
  const sig = c.req.raw.signal
  if (sig.aborted) ac.abort()
  else sig.addEventListener('abort', () => ac.abort(), { once: true })
  return ac
}

const HEADERS: Record<Framing, Record<string, string>> = {
  sse: {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  },
  ndjson: {
    'content-type': 'application/x-ndjson; charset=utf-8',
    'cache-control': 'no-cache',
    'x-accel-buffering': 'no',
  },
}

/** Bytes queued for a client beyond what its socket took, before delivery pauses. */
export const STREAM_HIGH_WATER_BYTES = 64 * 1024

/**
 * Starts `run` writing into a streamed response. An error thrown after the stream started becomes
 * `data: {"error":{...}}` (the shape the openai SDK turns into an APIError), then the stream closes.
 *
 * @example
 * return eventStream(c, state, 'sse', client, async (sink) => { sink.send({ a: 1 }); sink.raw('data: [DONE]\n\n') })
 */
export function eventStream(
  c: Context,
  state: AppState,
  framing: Framing,
  client: AbortController,
  run: (sink: EventSink) => Promise<void>,
): Response {
  const enc = new TextEncoder()
  let ctl!: ReadableStreamDefaultController<Uint8Array>
  let closed = false
  let ping: ReturnType<typeof setInterval> | null = null
  let waiters: Array<() => void> = []
  let stall: ReturnType<typeof setTimeout> | null = null
  const wake = () => {
    if (stall) clearTimeout(stall)
    stall = null
    const w = waiters
    waiters = []
    for (const f of w) f()
  }
  const body = new ReadableStream<Uint8Array>(
    {
      start: (controller) => {
        ctl = controller
      },
      pull: wake,
      cancel: () => {
        closed = true
        sink.stopPings()
        client.abort()
        wake()
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: STREAM_HIGH_WATER_BYTES }),
  )
  const write = (text: string) => {
    if (closed) return
    try {
      ctl.enqueue(enc.encode(text))
    } catch {
      closed = true
    }
  }
  const sink: EventSink = {
    send: (obj) =>
      write(framing === 'sse' ? `data: ${JSON.stringify(obj)}\n\n` : JSON.stringify(obj) + '\n'),
    raw: write,
    ready() {
      if (sink.closed || (ctl.desiredSize ?? 1) > 0) return Promise.resolve()
      return new Promise<void>((resolve) => {
        waiters.push(resolve)
        stall ??= setTimeout(() => {
          state.metrics.stalled.inc()
          closed = true
          sink.stopPings()
          client.abort() // cancels the generation in the engine
          wake()
        }, state.stallTimeoutMs)
      })
    },
    startPings(ms) {
      if (ping || ms <= 0) return
      ping = setInterval(() => write(framing === 'sse' ? ': ping\n\n' : '{"type":"ping"}\n'), ms)
    },
    stopPings() {
      if (ping) clearInterval(ping)
      ping = null
    },
    get closed() {
      return closed || client.signal.aborted
    },
  }
  client.signal.addEventListener(
    'abort',
    () => {
      sink.stopPings()
      wake()
    },
    { once: true },
  )
  void run(sink)
    .catch((e) => {
      const err = toApiError(e)
      state.metrics.errors.inc(1, { type: err.type })
      sink.send(err.body())
      // A stream cut by the server's shutdown still ends as the OpenAI clients expect a stream to end.
      if (framing === 'sse' && err.code === 'server_shutdown') sink.raw('data: [DONE]\n\n')
    })
    .finally(() => {
      sink.stopPings()
      wake()
      if (!closed) {
        closed = true
        try {
          ctl.close()
        } catch {
          // already closed by a cancel racing with us
        }
      }
    })
  return c.body(body, 200, HEADERS[framing])
}
