/**
 * Bounded load on loopback against the real tiny checkpoint: 32 concurrent streaming clients for a few
 * rounds, a quarter of them aborting midway. Every completed stream must carry exactly max_tokens tokens
 * and a finish reason, nothing may hang, /health must keep answering, and the engine must end idle.
 */
import { afterAll, beforeAll, expect, test } from 'bun:test'
import type { Model } from '../src/index.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { parseSse, readJson, waitFor } from './helpers/http.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

const CLIENTS = 32
const ROUNDS = 3
const MAX_TOKENS = 12
const CLIENT_DEADLINE_MS = 30_000

let model: Model
let srv: RunningServer
beforeAll(async () => {
  model = await loadTinyModel({ nBatchMax: CLIENTS })
  srv = await startServer({ model, port: 0, quiet: true })
}, LOAD_TIMEOUT_MS)
afterAll(async () => {
  await srv?.stop()
  model?.dispose()
})

interface Outcome {
  kind: 'chat' | 'generate'
  aborted: boolean
  tokens: number
  finish: string | null
}

interface ChatChunk {
  choices: Array<{ finish_reason: string | null }>
  usage?: { completion_tokens: number } | null
}

interface NativeEvent {
  type: string
  token_ids?: number[]
  finish_reason?: string
}

/** One streaming client; `abortAfter` chunks then it hangs up (null: reads to the end). */
async function client(i: number, abortAfter: number | null): Promise<Outcome> {
  const kind = i % 2 === 0 ? 'chat' : 'generate'
  const ac = new AbortController()
  const deadline = setTimeout(() => ac.abort(new Error(`client ${i} hung`)), CLIENT_DEADLINE_MS)
  const body =
    kind === 'chat'
      ? {
          messages: [{ role: 'user', content: `client ${i}` }],
          stream: true,
          stream_options: { include_usage: true },
        }
      : { prompt: `client ${i} says`, logprobs: false }
  try {
    const r = await fetch(`${srv.url}${kind === 'chat' ? '/v1/chat/completions' : '/generate'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      // top_k bounds the sampler's work: on random weights a bare top_p nucleus spans most of the vocab.
      body: JSON.stringify({
        ...body,
        max_tokens: MAX_TOKENS,
        ignore_eos: true,
        temperature: 0.7,
        top_k: 40,
        seed: i,
      }),
      signal: ac.signal,
    })
    expect(r.status).toBe(200)
    if (abortAfter !== null) {
      const reader = r.body!.getReader()
      for (let n = 0; n < abortAfter; n++) await reader.read()
      ac.abort()
      return { kind, aborted: true, tokens: 0, finish: null }
    }
    const frames = parseSse(await r.text()).data
    if (kind === 'chat') {
      expect(frames.at(-1)).toBe('[DONE]')
      const chunks = frames.slice(0, -1) as ChatChunk[]
      const finish = chunks.find((d) => d.choices[0]?.finish_reason)?.choices[0]!.finish_reason
      return {
        kind,
        aborted: false,
        tokens: chunks.at(-1)!.usage!.completion_tokens,
        finish: finish ?? null,
      }
    }
    const events = frames as NativeEvent[]
    const tokens = events.reduce((n, e) => n + (e.token_ids?.length ?? 0), 0)
    return { kind, aborted: false, tokens, finish: events.at(-1)?.finish_reason ?? null }
  } finally {
    clearTimeout(deadline)
  }
}

test(`${CLIENTS} concurrent streams x ${ROUNDS} rounds, a quarter aborting midway`, async () => {
  const healthMs: number[] = []
  let loading = true
  const prober = (async () => {
    while (loading) {
      const t0 = performance.now()
      const r = await fetch(`${srv.url}/health`)
      healthMs.push(performance.now() - t0)
      expect(r.status).toBe(200)
      await Bun.sleep(20)
    }
  })()
  const t0 = performance.now()
  let completed = 0
  let aborted = 0
  for (let round = 0; round < ROUNDS; round++) {
    const tr = performance.now()
    const outcomes = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) =>
        client(i, i % 4 === round % 4 ? 2 + (i % 3) : null),
      ),
    )
    for (const o of outcomes) {
      if (o.aborted) {
        aborted++
        continue
      }
      completed++
      expect({ kind: o.kind, tokens: o.tokens, finish: o.finish }).toEqual({
        kind: o.kind,
        tokens: MAX_TOKENS,
        finish: 'length',
      })
    }
    console.log(`round ${round}: ${((performance.now() - tr) / 1000).toFixed(2)} s`)
  }
  loading = false
  await prober
  const wall = (performance.now() - t0) / 1000
  healthMs.sort((a, b) => a - b)
  const pct = (p: number) =>
    healthMs[Math.min(healthMs.length - 1, Math.floor(p * healthMs.length))]!.toFixed(1)
  console.log(
    `load: ${completed} completed + ${aborted} aborted streams in ${wall.toFixed(2)} s; ` +
      `/health during load p50 ${pct(0.5)} ms p99 ${pct(0.99)} ms (${healthMs.length} probes)`,
  )
  expect(completed).toBe(CLIENTS * ROUNDS - aborted)
  expect(aborted).toBe(ROUNDS * (CLIENTS / 4))
  await waitFor(() => model.stats().running === 0, 10_000, 'engine running == 0')
  const s = model.stats()
  console.log(
    `after load: running ${s.running} waiting ${s.waiting} kv used ${s.kvTokensUsed}/${s.kvTokensTotal}`,
  )
  expect([s.running, s.waiting, s.kvTokensUsed]).toEqual([0, 0, 0])
  const metrics = await (await fetch(`${srv.url}/metrics`)).text()
  expect(metrics).toMatch(/^minicpm:http_requests_in_flight 0$/m)
}, 60_000)

test('beyond the in-flight bound: 429 + retry-after, the admitted ones complete', async () => {
  const small = await startServer({ model, port: 0, quiet: true, maxInFlight: 4 })
  try {
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        fetch(`${small.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            prompt: `x${i}`,
            max_tokens: 24,
            ignore_eos: true,
            temperature: 0,
          }),
        }).then(async (r) => ({
          status: r.status,
          retry: r.headers.get('retry-after'),
          body: await readJson(r),
        })),
      ),
    )
    const ok = results.filter((r) => r.status === 200)
    const limited = results.filter((r) => r.status === 429)
    console.log(`overload: ${ok.length} x 200, ${limited.length} x 429 of ${results.length}`)
    expect(ok.length + limited.length).toBe(results.length)
    expect(ok.length).toBeGreaterThanOrEqual(4)
    expect(limited.length).toBeGreaterThan(0)
    for (const r of limited) expect([r.retry, r.body.error.type]).toEqual(['1', 'rate_limit_error'])
    for (const r of ok) expect(r.body.usage.completion_tokens).toBe(24)
  } finally {
    await small.stop()
  }
  await waitFor(() => model.stats().running === 0, 5000, 'engine idle')
})
