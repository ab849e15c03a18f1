/**
 * Completions, models, tokenize and the native /generate through app.request() on the fake model:
 * JSON shapes against the official OpenAI schemas, several prompts, echo, legacy logprobs, NDJSON.
 */
import { beforeEach, describe, expect, test } from 'bun:test'
import type { Hono } from 'hono'
import { createApp } from '../routes/app.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { parseSse, postApp, readJson } from './helpers/http.ts'
import { schemaIssues } from './helpers/openai-schemas.ts'

let app: Hono
beforeEach(() => {
  app = createApp({ model: new FakeModel() })
})

describe('completions, models, tokenize, native generate (fake model)', () => {
  test('string prompt: default max_tokens 16, EOS ends with stop; ignore_eos runs to length', async () => {
    let body = await readJson(postApp(app, '/v1/completions', { prompt: 'ab' }))
    expect(schemaIssues('CreateCompletionResponse', body)).toEqual([])
    expect(body.choices).toEqual([
      { index: 0, text: 'Hello world', logprobs: null, finish_reason: 'stop' },
    ])
    body = await readJson(postApp(app, '/v1/completions', { prompt: 'ab', ignore_eos: true }))
    expect(body.choices[0].finish_reason).toBe('length')
    expect(body.usage.completion_tokens).toBe(16)
  })

  test('several prompts (string[] and int[][]) give indexed choices; echo; legacy logprobs', async () => {
    let body = await readJson(
      postApp(app, '/v1/completions', { prompt: ['ab', 'c'], max_tokens: 2, echo: true }),
    )
    expect(body.choices.map((c: { index: number; text: string }) => [c.index, c.text])).toEqual([
      [0, 'abHe'],
      [1, 'cHe'],
    ])
    expect(body.usage).toEqual({ prompt_tokens: 5, completion_tokens: 4, total_tokens: 9, prompt_tokens_details: { cached_tokens: 0 } })
    body = await readJson(
      postApp(app, '/v1/completions', {
        prompt: [[72, 105], [33]],
        max_tokens: 2,
        logprobs: 1,
      }),
    )
    expect(schemaIssues('CreateCompletionResponse', body)).toEqual([])
    expect(body.choices[1].logprobs).toEqual({
      tokens: ['H', 'e'],
      token_logprobs: [-0.25, -0.25],
      top_logprobs: [{ H: -0.25 }, { e: -0.25 }],
      text_offset: [0, 1],
    })
  })

  test('streaming several prompts: every choice finishes, usage chunk, [DONE] last', async () => {
    const r = await postApp(app, '/v1/completions', {
      prompt: ['a', 'b'],
      max_tokens: 2,
      stream: true,
      stream_options: { include_usage: true },
    })
    const { data } = parseSse(await r.text())
    expect(data.at(-1)).toBe('[DONE]')
    const chunks = data.slice(0, -1) as Array<{
      choices: Array<{ index: number; text: string; finish_reason: string | null }>
      usage: unknown
    }>
    for (const c of chunks) expect(schemaIssues('CreateCompletionStreamChunk', c)).toEqual([])
    for (const i of [0, 1]) {
      const mine = chunks.flatMap((c) => c.choices.filter((x) => x.index === i))
      expect(mine.map((x) => x.text).join('')).toBe('He')
      expect(mine.at(-1)!.finish_reason).toBe('length')
    }
    expect(chunks.at(-1)!.usage).toEqual({
      prompt_tokens: 4,
      completion_tokens: 4,
      total_tokens: 8,
      prompt_tokens_details: { cached_tokens: 0 },
    })
  })

  test('models list and lookup', async () => {
    const list = await readJson(app.request('/v1/models'))
    expect(schemaIssues('ListModelsResponse', list)).toEqual([])
    expect(list.data[0]).toMatchObject({
      id: 'fake-model',
      object: 'model',
      owned_by: 'minicpm-edge',
      max_model_len: 64,
      random_weights: true,
      weight_bytes: 4,
      bits_per_weight: 32,
      sparse_attention: null,
    })
    // A model loaded with InfLLM v2 says so, with its variant.
    const sparse = new FakeModel()
    Object.assign(sparse.info, { sparseAttention: 'v2' })
    const entry = (await readJson(createApp({ model: sparse }).request('/v1/models'))).data[0]
    expect(entry.sparse_attention).toEqual({ variant: 'v2' })
    console.log(`/v1/models entry: ${JSON.stringify(list.data[0])}`)
    expect((await app.request('/v1/models/fake-model')).status).toBe(200)
    const miss = await app.request('/v1/models/other')
    expect(miss.status).toBe(404)
    expect((await readJson(miss)).error.code).toBe('model_not_found')
  })

  test('tokenize / detokenize round trip', async () => {
    const t = await readJson(
      postApp(app, '/tokenize', { content: 'hey', add_special: false, with_pieces: true }),
    )
    expect(t.tokens).toEqual([
      { id: 104, piece: 'h' },
      { id: 101, piece: 'e' },
      { id: 121, piece: 'y' },
    ])
    const ids = (await readJson(postApp(app, '/tokenize', { prompt: 'hey' }))).tokens
    expect(ids).toEqual([1, 104, 101, 121])
    expect(await readJson(postApp(app, '/detokenize', { tokens: ids.slice(1) }))).toEqual({
      content: 'hey',
    })
  })

  test('/generate: SSE events, NDJSON by Accept, one JSON object with stream:false', async () => {
    const sse = parseSse(
      await (
        await postApp(app, '/generate', { prompt: 'a', max_tokens: 2, logprobs: true })
      ).text(),
    ).data as Array<Record<string, unknown>>
    expect(sse.map((e) => e.type)).toEqual(['start', 'delta', 'delta', 'finish'])
    expect(sse[0]).toMatchObject({ type: 'start', model: 'fake-model', prompt_tokens: 2 })
    expect(sse[1]).toMatchObject({
      text: 'H',
      token_ids: [72],
      logprobs: [{ token: 72, text: 'H', logprob: -0.25, top: [] }],
    })
    expect(sse[3]).toMatchObject({
      finish_reason: 'length',
      usage: { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4, prompt_tokens_details: { cached_tokens: 0 } },
    })
    const nd = await postApp(
      app,
      '/generate',
      { messages: [{ role: 'user', content: 'a' }], max_tokens: 1 },
      { accept: 'application/x-ndjson' },
    )
    expect(nd.headers.get('content-type')).toBe('application/x-ndjson; charset=utf-8')
    const lines = (await nd.text())
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(lines.map((l) => l.type)).toEqual(['start', 'delta', 'finish'])
    const js = await readJson(
      postApp(app, '/generate', { prompt: [72], max_tokens: 3, stream: false }),
    )
    expect(js).toMatchObject({ text: 'Hel', token_ids: [72, 101, 108], finish_reason: 'length' })
  })
  test('/metrics: valid exposition text; counters, histograms and errors follow the traffic', async () => {
    await postApp(app, '/v1/completions', { prompt: 'ab', max_tokens: 4 }) // 3 prompt, 4 generated
    await postApp(app, '/v1/completions', { prompt: 'ab', n: 3 }) // a 400
    const r = await app.request('/metrics')
    expect(r.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8')
    const text = await r.text()
    const sample =
      /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$/
    const bad = text
      .trimEnd()
      .split('\n')
      .filter((l) => !l.startsWith('# ') && !sample.test(l))
    expect(bad).toEqual([])
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(series + ' '))
      return line === undefined ? NaN : Number(line.slice(series.length + 1))
    }
    expect(value('minicpm:prompt_tokens_total')).toBe(3)
    expect(value('minicpm:generation_tokens_total')).toBe(4)
    expect(value('minicpm:request_success_total{finished_reason="length"}')).toBe(1)
    expect(value('minicpm:errors_total{type="invalid_request_error"}')).toBe(1)
    expect(value('minicpm:time_to_first_token_seconds_count')).toBe(1)
    expect(value('minicpm:inter_token_latency_seconds_count')).toBe(3)
    expect(value('minicpm:inter_token_latency_seconds_bucket{le="+Inf"}')).toBe(3)
    expect(value('minicpm:num_requests_running')).toBe(0)
    expect(value('minicpm:kv_cache_tokens_total')).toBe(4096)
    expect(value('minicpm:backend_info{backend="fake"}')).toBe(1) // the engine stats' backend and kernel family
  })
})
