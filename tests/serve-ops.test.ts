/**
 * What an operator relies on: the access log (one line per request at its last byte, with start time,
 * duration, time to headers, tokens and finish reason; plain and escaped, or JSON), graceful shutdown
 * (drain, then streams cut with an error frame and [DONE]), the periodic throughput line, /version.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { escapeField, formatRequest, type RequestRecord } from '../routes/access-log.ts'
import { createApp } from '../routes/app.ts'
import { startServer } from '../routes/server.ts'
import { Shutdown } from '../routes/shutdown.ts'
import type { Model } from '../src/index.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { parseSse, waitFor } from './helpers/http.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

let model: Model
beforeAll(async () => {
  model = await loadTinyModel()
}, LOAD_TIMEOUT_MS)
afterAll(() => model?.dispose())

const chat = (url: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], ...body }),
    signal,
  })

describe('access log', () => {
  test('a stream is logged at its last byte, with start time, tokens and finish reason', async () => {
    const fake = new FakeModel()
    fake.behaviour.reply = 'abcdefghij'
    fake.behaviour.tokenDelayMs = 30
    const lines: string[] = []
    const srv = await startServer({ model: fake, port: 0, log: (l) => lines.push(l) })
    try {
      const t0 = Date.now()
      const r = await chat(srv.url, { stream: true, max_tokens: 8 })
      await r.text()
      await waitFor(() => lines.length === 1, 2000, 'the access line')
      console.log(lines[0])
      const m = /^(\S+) (\S+) POST \/v1\/chat\/completions 200 dur=([\d.]+)ms ttfb=([\d.]+)ms prompt=(\d+) completion=8 finish=length$/.exec(lines[0]!)
      expect(m).not.toBeNull()
      expect(Math.abs(Date.parse(m![1]!) - t0)).toBeLessThan(1000)
      expect(m![2]).toBe(r.headers.get('x-request-id')!)
      // 8 tokens 30 ms apart: the duration covers the stream, not just the headers.
      expect(Number(m![3])).toBeGreaterThan(200)
      expect(Number(m![4])).toBeLessThan(Number(m![3]))
      expect(Number(m![5])).toBeGreaterThan(0)
    } finally {
      await srv.stop()
    }
  })

  test('--log-format json: one JSON object per line; a client that leaves is marked', async () => {
    const fake = new FakeModel()
    fake.behaviour.tokenDelayMs = 50
    fake.behaviour.reply = 'x'.repeat(40)
    const lines: string[] = []
    const srv = await startServer({ model: fake, port: 0, log: (l) => lines.push(l), logFormat: 'json' })
    try {
      await (await fetch(`${srv.url}/health`)).text()
      const ac = new AbortController()
      const r = await chat(srv.url, { stream: true, max_tokens: 30 }, ac.signal)
      const reader = r.body!.getReader()
      await reader.read()
      await reader.read()
      ac.abort()
      await waitFor(() => lines.length === 2, 3000, 'two access lines')
      const [health, stream] = lines.map((l) => JSON.parse(l))
      console.log(lines.join('\n'))
      expect(health).toMatchObject({ type: 'request', method: 'GET', path: '/health', status: 200, finish_reason: null })
      expect(stream).toMatchObject({ type: 'request', path: '/v1/chat/completions', status: 200, client_closed: true })
      expect(stream.finish_reason).toBe('cancelled')
      expect(typeof stream.time).toBe('string')
      expect(stream.duration_ms).toBeGreaterThanOrEqual(stream.ttfb_ms)
    } finally {
      await srv.stop()
    }
  })

  test('every plain field is escaped: a line stays one line, whatever the client sends', () => {
    const rec: RequestRecord = {
      id: 'a b"c',
      start: 0,
      t0: 0,
      method: 'GET',
      path: '/x\n2026-01-01T00:00:00.000Z fake 200\u00e9\\',
      status: 404,
      ttfbMs: 1,
      durationMs: 2,
      bytes: 0,
      promptTokens: 0,
      completionTokens: 0,
      finishReason: null,
      aborted: false,
    }
    const line = formatRequest(rec, 'plain')
    console.log(line)
    expect(line).toBe(
      '1970-01-01T00:00:00.000Z a\\x20b\\x22c GET /x\\x0a2026-01-01T00:00:00.000Z\\x20fake\\x20200\\xe9\\x5c 404 dur=2ms ttfb=1ms',
    )
    expect(escapeField('\u{1F600}')).toBe('\\u{1f600}')
    expect(JSON.parse(formatRequest(rec, 'json')).path).toBe(rec.path)
  })
})

describe('shutdown', () => {
  test('streams still running after the drain period end with an error frame and [DONE]', async () => {
    const fake = new FakeModel()
    fake.behaviour.reply = 'y'.repeat(40)
    fake.behaviour.tokenDelayMs = 50
    const lines: string[] = []
    const srv = await startServer({ model: fake, port: 0, log: (l) => lines.push(l) })
    const r = await chat(srv.url, { stream: true, max_tokens: 30 })
    expect(r.status).toBe(200)
    const text = r.text()
    await waitFor(() => srv.open === 1, 2000, 'the stream')
    const t0 = performance.now()
    await srv.stop({ drainS: 0.3 })
    const waited = performance.now() - t0
    const frames = parseSse(await text).data
    console.log(`stop() took ${waited.toFixed(0)} ms; last frames: ${JSON.stringify(frames.slice(-2))}`)
    expect(waited).toBeGreaterThan(280)
    expect(waited).toBeLessThan(2500)
    expect(frames.at(-1)).toBe('[DONE]')
    expect(frames.at(-2)).toMatchObject({ error: { code: 'server_shutdown', type: 'unavailable_error' } })
    expect(lines.at(-1)).toContain('finish=cancelled')
  })

  test('a stream that ends within the drain period ends normally; new requests get 503 while draining', async () => {
    const fake = new FakeModel()
    fake.behaviour.reply = 'z'.repeat(10)
    fake.behaviour.tokenDelayMs = 20
    const srv = await startServer({ model: fake, port: 0, quiet: true })
    const r = await chat(srv.url, { stream: true, max_tokens: 8 })
    const text = r.text()
    await waitFor(() => srv.open === 1, 2000, 'the stream')
    await srv.stop({ drainS: 5 })
    const frames = parseSse(await text).data
    expect(frames.at(-1)).toBe('[DONE]')
    expect(frames.at(-2)).toMatchObject({ choices: [{ finish_reason: 'length' }] })

    const shutdown = new Shutdown()
    shutdown.draining = true
    const app = createApp({ model: fake, shutdown })
    const h = await app.request('/health')
    expect(h.status).toBe(503)
    expect(h.headers.get('retry-after')).toBe('5')
    expect(((await h.json()) as any).error.message).toBe('the server is shutting down')
  })

  test('a non-streaming request cut by the shutdown gets a 503 JSON error', async () => {
    const fake = new FakeModel()
    fake.behaviour.reply = 'w'.repeat(40)
    fake.behaviour.tokenDelayMs = 50
    const srv = await startServer({ model: fake, port: 0, quiet: true })
    const res = chat(srv.url, { max_tokens: 30 })
    await waitFor(() => srv.open === 1, 2000, 'the request')
    await srv.stop({ drainS: 0.1 })
    const r = await res
    expect(r.status).toBe(503)
    expect(((await r.json()) as any).error.code).toBe('server_shutdown')
  })
})

describe('operator basics', () => {
  test('a throughput line while busy, none while idle', async () => {
    const lines: string[] = []
    const srv = await startServer({ model, port: 0, quiet: false, log: (l) => lines.push(l), statsIntervalS: 0.1 })
    try {
      await Bun.sleep(250)
      expect(lines.filter((l) => l.includes('throughput:'))).toEqual([])
      const r = await chat(srv.url, { stream: true, max_tokens: 200, ignore_eos: true })
      await r.text()
      await Bun.sleep(150)
      const tp = lines.filter((l) => l.includes('throughput:'))
      console.log(tp.join('\n'))
      expect(tp.length).toBeGreaterThan(0)
      expect(tp[0]).toMatch(
        /^\S+Z throughput: prompt [\d.]+ tok\/s, generation [\d.]+ tok\/s, running \d+, waiting \d+, KV cache [\d.]+% \(\d+\/\d+ tokens\)$/,
      )
    } finally {
      await srv.stop()
    }
  })

  test('GET /version', async () => {
    const srv = await startServer({ model, port: 0, quiet: true })
    try {
      const v = (await (await fetch(`${srv.url}/version`)).json()) as any
      console.log(JSON.stringify(v))
      expect(v.version).toMatch(/^\d+\.\d+\.\d+$/)
      expect(v.bun).toBe(Bun.version)
      expect(v.model.id).toBe(model.info.id)
      expect(v.model.random_weights).toBe(true)
    } finally {
      await srv.stop()
    }
  })
})
