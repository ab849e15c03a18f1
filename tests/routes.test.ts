/**
 * Chat routes through app.request(): exact SSE frames and JSON shapes checked against the official
 * OpenAI schemas, on a deterministic fake model; then the routes on the real tiny checkpoint.
 * Other endpoints: routes-native.test.ts; bad inputs and limits: routes-errors.test.ts.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'bun:test'
import type { Hono } from 'hono'
import { createApp } from '../routes/app.ts'
import type { Model } from '../src/index.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { parseSse, postApp, readJson, sseText, waitFor } from './helpers/http.ts'
import { schemaIssues } from './helpers/openai-schemas.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel, SERVER_CTX } from './helpers/server-model.ts'

const user = (content: unknown) => ({ messages: [{ role: 'user', content }] })

let fake: FakeModel
let app: Hono
beforeEach(() => {
  fake = new FakeModel()
  app = createApp({ model: fake, pingIntervalMs: 40 })
})

describe('chat completions (fake model)', () => {
  test('non-streaming: OpenAI schema, usage and timings', async () => {
    const r = await postApp(app, '/v1/chat/completions', { ...user('hi'), max_tokens: 5 })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-request-id')).toBeTruthy()
    const body = await readJson(r)
    expect(schemaIssues('CreateChatCompletionResponse', body)).toEqual([])
    expect(body.choices[0].message).toEqual({ role: 'assistant', content: 'Hello', refusal: null })
    expect(body.choices[0].finish_reason).toBe('length')
    expect(body.usage).toEqual({ prompt_tokens: 20, completion_tokens: 5, total_tokens: 25, prompt_tokens_details: { cached_tokens: 0 } })
    expect(body.timings.predicted_n).toBe(5)
  })

  test('streaming: exact frames, role first, finish chunk, usage chunk, [DONE]', async () => {
    const r = await postApp(app, '/v1/chat/completions', {
      ...user('hi'),
      max_tokens: 3,
      stream: true,
      stream_options: { include_usage: true },
    })
    expect(r.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    const text = await r.text()
    const { data } = parseSse(text)
    const first = data[0] as { id: string; created: number }
    const head = {
      id: first.id,
      created: first.created,
      model: 'fake-model',
      object: 'chat.completion.chunk',
      system_fingerprint: 'minicpm-edge',
    }
    const chunk = (delta: object, finish: string | null) => ({
      ...head,
      choices: [{ index: 0, logprobs: null, delta, finish_reason: finish }],
      usage: null,
    })
    const timings = {
      queue_ms: 0,
      prompt_n: 20,
      prompt_ms: 0,
      prompt_per_second: null,
      predicted_n: 3,
      predicted_ms: 0,
      predicted_per_token_ms: 0,
      predicted_per_second: null,
      attention_share: null,
    }
    expect(text).toBe(
      sseText([
        chunk({ role: 'assistant', content: '' }, null),
        chunk({ content: 'H' }, null),
        chunk({ content: 'e' }, null),
        chunk({ content: 'l' }, null),
        { ...chunk({}, 'length'), timings },
        {
          ...head,
          choices: [],
          usage: { prompt_tokens: 20, completion_tokens: 3, total_tokens: 23, prompt_tokens_details: { cached_tokens: 0 } },
        },
        '[DONE]',
      ]),
    )
    for (const d of data.slice(0, -1))
      expect(schemaIssues('CreateChatCompletionStreamResponse', d)).toEqual([])
  })

  test('logprobs in the chat shape, with and without top_logprobs', async () => {
    for (const top of [2, undefined]) {
      const r = await postApp(app, '/v1/chat/completions', {
        ...user('x'),
        max_tokens: 2,
        logprobs: true,
        top_logprobs: top,
      })
      const body = await readJson(r)
      expect(schemaIssues('CreateChatCompletionResponse', body)).toEqual([])
      const content = body.choices[0].logprobs.content
      expect(content.map((c: { token: string }) => c.token)).toEqual(['H', 'e'])
      expect(content[0]).toEqual({
        token: 'H',
        logprob: -0.25,
        bytes: [72],
        top_logprobs: top
          ? [
              { token: 'H', logprob: -0.25, bytes: [72] },
              { token: '!', logprob: -2, bytes: [33] },
            ]
          : [],
      })
    }
  })

  test('fields are mapped to the runtime request; developer is system, text parts joined', async () => {
    const r = await postApp(app, '/v1/chat/completions', {
      messages: [
        { role: 'developer', content: 'be brief' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'a' },
            { type: 'text', text: 'b' },
          ],
        },
      ],
      temperature: 0.5,
      top_p: 0.9,
      top_k: -1,
      min_p: 0.1,
      repetition_penalty: 1.1,
      presence_penalty: 0.5,
      frequency_penalty: 0.25,
      seed: 42,
      max_completion_tokens: 4,
      stop: 'x',
      stop_token_ids: [7],
      logit_bias: { '5': -100 },
      ignore_eos: true,
      skip_special_tokens: false,
      add_special_tokens: false,
      chat_template_kwargs: { enable_thinking: false },
      user: 'u1',
      store: false,
      metadata: { a: 'b' },
      service_tier: 'auto',
    })
    expect(r.status).toBe(200)
    const { signal: _s, ...req } = fake.requests.at(-1)!
    expect(req).toEqual({
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'a\nb' },
      ],
      temperature: 0.5,
      topP: 0.9,
      topK: 0,
      minP: 0.1,
      repetitionPenalty: 1.1,
      presencePenalty: 0.5,
      frequencyPenalty: 0.25,
      seed: 42,
      maxTokens: 4,
      ignoreEos: true,
      stop: ['x'],
      stopTokenIds: [7],
      logitBias: { 5: -100 },
      addSpecialTokens: false,
      skipSpecialTokens: false,
      chatTemplateKwargs: { enable_thinking: false },
    })
  })

  test('pings while prefill runs, then content', async () => {
    fake.behaviour.prefillDelayMs = 200
    const r = await postApp(app, '/v1/chat/completions', {
      ...user('x'),
      max_tokens: 1,
      stream: true,
    })
    const text = await r.text()
    const firstContent = text.indexOf('"content":"H"')
    expect(text.indexOf(': ping\n\n')).toBeGreaterThan(0)
    expect(text.lastIndexOf(': ping\n\n')).toBeLessThan(firstContent)
    expect(parseSse(text).comments.length).toBeGreaterThanOrEqual(2)
  })

  test('an engine error after the stream started: error frame, then close (no [DONE])', async () => {
    fake.behaviour.errorAfter = 2
    const r = await postApp(app, '/v1/chat/completions', { ...user('x'), stream: true })
    const { data } = parseSse(await r.text())
    expect(data.length).toBe(4) // role, H, e, error
    expect(data[3]).toEqual({
      error: {
        message: 'generation failed: fake engine failure',
        type: 'server_error',
        param: null,
        code: 'engine_error',
      },
    })
    expect(schemaIssues('ErrorResponse', data[3])).toEqual([])
  })

  test('client abort mid-stream and during prefill cancels the generation', async () => {
    for (const phase of ['decode', 'prefill']) {
      fake.behaviour.tokenDelayMs = phase === 'decode' ? 20 : 0
      fake.behaviour.prefillDelayMs = phase === 'prefill' ? 10_000 : 0
      const ac = new AbortController()
      const r = await postApp(
        app,
        '/v1/chat/completions',
        { ...user('x'), ignore_eos: true, stream: true },
        {},
        ac.signal,
      )
      const reader = r.body!.getReader()
      await reader.read() // the role chunk
      expect(fake.stats().running).toBe(1)
      await reader.cancel()
      await waitFor(() => fake.stats().running === 0, 2000, `running == 0 after abort (${phase})`)
      expect(fake.requests.at(-1)!.signal!.aborted).toBe(true)
    }
    const metrics = await (await app.request('/metrics')).text()
    expect(metrics).toContain('minicpm:http_requests_in_flight 0\n')
  })
})

describe('routes on the real tiny checkpoint', () => {
  let model: Model
  let real: Hono
  beforeAll(async () => {
    model = await loadTinyModel()
    real = createApp({ model })
  }, LOAD_TIMEOUT_MS)
  afterAll(() => model?.dispose())

  test('chat JSON and stream validate against the OpenAI schemas', async () => {
    const body = await readJson(
      postApp(real, '/v1/chat/completions', {
        ...user('Hello'),
        max_tokens: 6,
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 2,
      }),
    )
    expect(schemaIssues('CreateChatCompletionResponse', body)).toEqual([])
    expect(body.usage.completion_tokens).toBe(6)
    expect(body.choices[0].logprobs.content.length).toBe(6)
    const r = await postApp(real, '/v1/chat/completions', {
      ...user('Hello'),
      max_tokens: 6,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    })
    const { data } = parseSse(await r.text())
    expect(data.at(-1)).toBe('[DONE]')
    for (const d of data.slice(0, -1))
      expect(schemaIssues('CreateChatCompletionStreamResponse', d)).toEqual([])
    expect((data.at(-2) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(
      6,
    )
  })

  test('completions with token prompts, limits and bad ids; engine idle afterwards', async () => {
    const body = await readJson(
      postApp(real, '/v1/completions', {
        prompt: [
          [1, 100, 200],
          [1, 300],
        ],
        max_tokens: 5,
        ignore_eos: true,
      }),
    )
    expect(schemaIssues('CreateCompletionResponse', body)).toEqual([])
    expect(body.choices.map((c: { finish_reason: string }) => c.finish_reason)).toEqual([
      'length',
      'length',
    ])
    expect(body.usage).toEqual({ prompt_tokens: 5, completion_tokens: 10, total_tokens: 15, prompt_tokens_details: { cached_tokens: 0 } })
    expect(
      (await postApp(real, '/v1/completions', { prompt: [1, model.info.nVocab] })).status,
    ).toBe(400)
    const long = await postApp(real, '/v1/completions', { prompt: Array(SERVER_CTX + 1).fill(100) })
    expect([long.status, (await readJson(long)).error.code]).toEqual([
      400,
      'context_length_exceeded',
    ])
    const tok = await readJson(
      postApp(real, '/tokenize', {
        content: '<|im_start|>user\nhi<|im_end|>',
        add_special: false,
      }),
    )
    expect(tok.tokens).toEqual([73441, 1836, 5, 6920, 73440])
    await waitFor(() => model.stats().running === 0, 5000, 'engine idle')
    expect(model.stats().kvTokensUsed).toBe(0)
  })
})
