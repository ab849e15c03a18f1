/**
 * @module
 * Event streams for the generation routes: SSE (`data: {json}\n\n`, `: ping` comments) or NDJSON,
 * written through a ReadableStream so each frame is one chunk. The client's disconnect (request
 * signal or the body being cancelled) aborts one AbortController that the generation listens to.
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
  const body = new ReadableStream<Uint8Array>({
    start: (controller) => {
      ctl = controller
    },
    cancel: () => {
      closed = true
      sink.stopPings()
      client.abort()
    },
  })
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
  client.signal.addEventListener('abort', () => sink.stopPings(), { once: true })
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
