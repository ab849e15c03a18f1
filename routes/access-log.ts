/**
 * @module
 * Request accounting for the access log, shutdown and the throughput summary, kept in one module so the
 * routes need not know about it. Each request gets a record in an AsyncLocalStorage (startGeneration adds
 * its tokens and finish reason); a streamed body is wrapped so the record closes at its last byte, or when
 * the client goes away. Lines are plain (`time id method path status dur=… ttfb=… prompt=… completion=…
 * finish=…`, every field escaped) or JSON, one per line.
 */

import { AsyncLocalStorage } from 'node:async_hooks'
import type { MiddlewareHandler } from 'hono'

export type LogFormat = 'plain' | 'json'
export const LOG_FORMATS: readonly LogFormat[] = ['plain', 'json']

export interface RequestRecord {
  id: string
  /** Wall-clock start (ms since the epoch). */
  start: number
  t0: number
  method: string
  path: string
  status: number
  /** Until the response headers. */
  ttfbMs: number
  /** Until the last byte of the body (or the client leaving). */
  durationMs: number
  bytes: number
  promptTokens: number
  completionTokens: number
  finishReason: string | null
  /** The client went away before the last byte. */
  aborted: boolean
}

/** The record of the request being handled, for startGeneration to add its tokens to. */
export const requestContext = new AsyncLocalStorage<RequestRecord>()

const STREAMED = /^(text\/event-stream|application\/x-ndjson)/

/** Counts requests until their last byte; `idle()` resolves when none is open. */
export class RequestTracker {
  open = 0
  private waiters: (() => void)[] = []

  idle(): Promise<void> {
    if (this.open === 0) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  private closed(): void {
    this.open--
    if (this.open === 0) for (const w of this.waiters.splice(0)) w()
  }

  /** The middleware: one record per request, `onDone` at its last byte. */
  middleware(onDone?: (rec: RequestRecord) => void): MiddlewareHandler {
    return async (c, next) => {
      const rec: RequestRecord = {
        id: c.get('requestId') ?? '',
        start: Date.now(),
        t0: performance.now(),
        method: c.req.method,
        path: c.req.path,
        status: 0,
        ttfbMs: 0,
        durationMs: 0,
        bytes: 0,
        promptTokens: 0,
        completionTokens: 0,
        finishReason: null,
        aborted: false,
      }
      this.open++
      let done = false
      const finish = (aborted: boolean) => {
        if (done) return
        done = true
        rec.aborted = aborted
        // The client left mid-generation: its generation is being cancelled (the engine says so later).
        if (aborted && rec.finishReason === null && rec.promptTokens > 0) rec.finishReason = 'cancelled'
        rec.durationMs = performance.now() - rec.t0
        this.closed()
        onDone?.(rec)
      }
      try {
        await requestContext.run(rec, next)
      } catch (e) {
        finish(false)
        throw e
      }
      rec.status = c.res.status
      rec.ttfbMs = performance.now() - rec.t0
      const body = c.res.body
      if (!body || !STREAMED.test(c.res.headers.get('content-type') ?? '')) {
        finish(false)
        return
      }
      const reader = body.getReader()
      const counted = new ReadableStream<Uint8Array>({
        async pull(ctl) {
          try {
            const r = await reader.read()
            if (r.done) {
              ctl.close()
              finish(false)
            } else {
              rec.bytes += r.value.byteLength
              ctl.enqueue(r.value)
            }
          } catch (e) {
            ctl.error(e)
            finish(true)
          }
        },
        cancel(reason) {
          finish(true)
          return reader.cancel(reason)
        },
      })
      c.res = new Response(counted, c.res)
    }
  }
}

/** Printable ASCII only, no spaces or quotes: anything else becomes \xHH (or \u{…}), so a line stays one line. */
export function escapeField(s: string): string {
  return s.replace(/[^\x21-\x7e]|["\\]/gu, (ch) => {
    const cp = ch.codePointAt(0)!
    return cp < 0x100 ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`
  })
}

const ms = (v: number) => Math.round(v * 10) / 10

export function formatRequest(r: RequestRecord, format: LogFormat): string {
  if (format === 'json') {
    return JSON.stringify({
      time: new Date(r.start).toISOString(),
      type: 'request',
      id: r.id,
      method: r.method,
      path: r.status === 401 ? '-' : r.path,
      status: r.status,
      duration_ms: ms(r.durationMs),
      ttfb_ms: ms(r.ttfbMs),
      bytes: r.bytes,
      prompt_tokens: r.promptTokens,
      completion_tokens: r.completionTokens,
      finish_reason: r.finishReason,
      client_closed: r.aborted,
    })
  }
  // A request refused by the API key check logs no client-chosen path.
  const path = r.status === 401 ? '-' : escapeField(r.path)
  const tokens =
    r.finishReason !== null || r.promptTokens > 0
      ? ` prompt=${r.promptTokens} completion=${r.completionTokens} finish=${escapeField(r.finishReason ?? '-')}`
      : ''
  return (
    `${new Date(r.start).toISOString()} ${escapeField(r.id) || '-'} ${escapeField(r.method)} ${path} ` +
    `${r.status} dur=${ms(r.durationMs)}ms ttfb=${ms(r.ttfbMs)}ms${tokens}${r.aborted ? ' client-closed' : ''}`
  )
}

/** A server message (startup, shutdown, throughput) in the chosen format. */
export function formatEvent(format: LogFormat, type: string, message: string, fields: Record<string, unknown> = {}): string {
  if (format === 'json') return JSON.stringify({ time: new Date().toISOString(), type, message, ...fields })
  return type === 'message' ? message : `${new Date().toISOString()} ${message}`
}
