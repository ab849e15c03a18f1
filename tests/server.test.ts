/**
 * A real listening server (port 0) driven by the official `openai` client (v6) and raw fetch: chat and
 * completions, streaming and not, include_usage, abort mid-stream, errors as the SDK's typed errors.
 * The real tiny checkpoint serves; the fake model is used where an engine failure must be staged.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import OpenAI from 'openai'
import type { Model } from '../src/index.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { parseSse, readJson, waitFor } from './helpers/http.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

// Vendor extras travel in the body exactly as openai-python's extra_body would send them.
const extras = { ignore_eos: true } as Record<string, unknown>

let model: Model
let srv: RunningServer
let client: OpenAI
beforeAll(async () => {
  model = await loadTinyModel()
  srv = await startServer({ model, port: 0, quiet: true, apiKey: 'sk-test' })
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sk-test', maxRetries: 0 })
}, LOAD_TIMEOUT_MS)
afterAll(async () => {
  await srv?.stop()
  model?.dispose()
})

describe('openai client against the real model', () => {
  test('binds 127.0.0.1 by default', () => {
    expect(srv.url).toBe(`http://127.0.0.1:${srv.port}`)
  })

  test('chat, non-streaming', async () => {
    const r = await client.chat.completions.create({
      model: model.info.id,
      messages: [{ role: 'user', content: 'Hello!' }],
      max_completion_tokens: 7,
      ...extras,
    })
    expect(r.object).toBe('chat.completion')
    expect(typeof r.choices[0]!.message.content).toBe('string')
    expect(r.choices[0]!.finish_reason).toBe('length')
    expect(r.usage!.completion_tokens).toBe(7)
  })

  test('chat, streaming with include_usage', async () => {
    const stream = await client.chat.completions.create({
      model: model.info.id,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
      ],
      max_tokens: 9,
      stream: true,
      stream_options: { include_usage: true },
      ...extras,
    })
    let roles = 0
    let finish: string | null = null
    let usage: OpenAI.CompletionUsage | null | undefined = null
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.role) roles++
      finish = chunk.choices[0]?.finish_reason ?? finish
      if (chunk.usage) usage = chunk.usage
    }
    expect([roles, finish, usage?.completion_tokens]).toEqual([1, 'length', 9])
  })

  test('completions, streaming and not, with a model id omitted', async () => {
    const r = await client.completions.create({
      model: '',
      prompt: ['One', 'Two'],
      max_tokens: 4,
      ...extras,
    })
    expect(r.choices.map((c) => [c.index, c.finish_reason])).toEqual([
      [0, 'length'],
      [1, 'length'],
    ])
    expect(r.usage!.completion_tokens).toBe(8)
    const stream = await client.completions.create({
      model: model.info.id,
      prompt: 'Three',
      max_tokens: 5,
      stream: true,
      ...extras,
    })
    let finish: string | null = null
    for await (const chunk of stream) finish = chunk.choices[0]?.finish_reason ?? finish
    expect(finish).toBe('length')
  })

  test('abort mid-stream: engine running back to 0, KV freed', async () => {
    const stream = await client.chat.completions.create({
      model: model.info.id,
      messages: [{ role: 'user', content: 'Count' }],
      max_tokens: 200,
      stream: true,
      ...extras,
    })
    let n = 0
    for await (const _ of stream) if (++n === 3) stream.controller.abort()
    // Chunks the SDK had already read may still come after the abort; the 200-token stream must not run on.
    expect(n).toBeGreaterThanOrEqual(3)
    expect(n).toBeLessThan(20)
    await waitFor(
      () => model.stats().running === 0 && model.stats().kvTokensUsed === 0,
      5000,
      'engine idle',
    )
    expect(model.stats().waiting).toBe(0)
  })

  test('errors arrive as the SDK typed errors', async () => {
    const bad = (p: Record<string, unknown>) =>
      client.chat.completions
        .create({ model: model.info.id, messages: [{ role: 'user', content: 'x' }], ...p })
        .then(
          () => null,
          (e) => e,
        )
    expect(await bad({ model: 'gpt-4o' })).toBeInstanceOf(OpenAI.NotFoundError)
    expect(await bad({ n: 2 })).toBeInstanceOf(OpenAI.BadRequestError)
    const wrongKey = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 })
    expect(await wrongKey.models.list().catch((e) => e)).toBeInstanceOf(OpenAI.AuthenticationError)
    const models = await client.models.list()
    expect(models.data[0]).toMatchObject({ id: model.info.id, random_weights: true })
  })

  test('raw fetch: health without key, request id echoed, metrics counted', async () => {
    expect(await readJson(fetch(`${srv.url}/health`))).toEqual({ status: 'ok' })
    const auth = { authorization: 'Bearer sk-test' }
    const r = await fetch(`${srv.url}/generate`, {
      method: 'POST',
      headers: { ...auth, 'x-request-id': 'req-123', 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Hi', max_tokens: 3, ignore_eos: true }),
    })
    expect(r.headers.get('x-request-id')).toBe('req-123')
    const events = parseSse(await r.text()).data as Array<{ type: string; token_ids?: number[] }>
    expect(events.flatMap((e) => e.token_ids ?? []).length).toBe(3)
    const metrics = await (await fetch(`${srv.url}/metrics`, { headers: auth })).text()
    const generated = Number(metrics.match(/^minicpm:generation_tokens_total (\d+)$/m)?.[1])
    console.log(`metrics: generation_tokens_total=${generated}`)
    expect(generated).toBeGreaterThanOrEqual(3)
    expect(metrics).toMatch(/^minicpm:time_to_first_token_seconds_count \d+$/m)
    expect(metrics).toMatch(/^minicpm:kv_cache_usage_perc 0$/m)
  })
})

describe('server behaviour with a staged engine', () => {
  let fake: FakeModel
  let staged: RunningServer
  beforeAll(async () => {
    fake = new FakeModel()
    staged = await startServer({
      model: fake,
      port: 0,
      quiet: true,
      idleTimeoutS: 1,
      pingIntervalMs: 5000,
    })
  })
  afterAll(() => staged?.stop())

  test('an error mid-stream reaches the SDK as an APIError', async () => {
    fake.behaviour.errorAfter = 2
    const c = new OpenAI({ baseURL: `${staged.url}/v1`, apiKey: 'x', maxRetries: 0 })
    const stream = await c.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'x' }],
      stream: true,
    })
    let got = ''
    const err = await (async () => {
      for await (const ch of stream) got += ch.choices[0]?.delta.content ?? ''
    })().catch((e) => e)
    fake.behaviour.errorAfter = null
    expect(got).toBe('He')
    expect(err).toBeInstanceOf(OpenAI.APIError)
    expect(String(err.message)).toContain('fake engine failure')
  })

  // Bun checks idle sockets every ~4 s: with idleTimeout 1 s an unprotected stream silent for 6 s is
  // cut (ECONNRESET, seen at 4.3 s); this one must survive because the route lifts the timeout.
  test("a silent prefill longer than Bun's idle timeout is not cut", async () => {
    fake.behaviour.prefillDelayMs = 6000
    const t0 = performance.now()
    const r = await fetch(`${staged.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        messages: [{ role: 'user', content: 'x' }],
        max_tokens: 2,
        stream: true,
      }),
    })
    const data = parseSse(await r.text()).data
    const ms = performance.now() - t0
    fake.behaviour.prefillDelayMs = 0
    console.log(`silent prefill: ${ms.toFixed(0)} ms with idleTimeout 1 s, ${data.length} frames`)
    expect(data.at(-1)).toBe('[DONE]')
    expect(ms).toBeGreaterThan(5900)
  }, 20_000)

  test('a non-streaming client that hangs up cancels its generation', async () => {
    fake.behaviour.tokenDelayMs = 50
    const ac = new AbortController()
    const pending = fetch(`${staged.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        messages: [{ role: 'user', content: 'x' }],
        max_tokens: 40,
        ignore_eos: true,
      }),
      signal: ac.signal,
    }).catch((e) => e)
    await waitFor(() => fake.stats().running === 1, 2000, 'generation started')
    ac.abort()
    expect(await pending).toBeInstanceOf(Error)
    const t0 = performance.now()
    await waitFor(() => fake.stats().running === 0, 2000, 'generation cancelled')
    fake.behaviour.tokenDelayMs = 0
    console.log(
      `non-streaming hang-up: generation cancelled ${(performance.now() - t0).toFixed(0)} ms after abort`,
    )
    expect(fake.requests.at(-1)!.signal!.aborted).toBe(true)
  })

  test('loading: /health 503 with retry-after, then 200', async () => {
    let resolve!: (m: FakeModel) => void
    const s = await startServer({
      model: new Promise<FakeModel>((r) => (resolve = r)),
      port: 0,
      quiet: true,
    })
    try {
      const r = await fetch(`${s.url}/health`)
      expect([r.status, r.headers.get('retry-after')]).toEqual([503, '2'])
      resolve(new FakeModel())
      await s.model
      expect((await fetch(`${s.url}/health`)).status).toBe(200)
    } finally {
      await s.stop()
    }
  })
})
