/**
 * Every bad input is a 4xx in the OpenAI envelope (checked against the official ErrorResponse schema)
 * and the server keeps serving afterwards; overload, body limit, API key, CORS, loading state.
 */
import { beforeEach, describe, expect, test } from 'bun:test'
import type { Hono } from 'hono'
import { createApp } from '../routes/app.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { postApp, readJson } from './helpers/http.ts'
import { schemaIssues } from './helpers/openai-schemas.ts'

const user = (content: unknown) => ({ messages: [{ role: 'user', content }] })

let fake: FakeModel
let app: Hono
beforeEach(() => {
  fake = new FakeModel()
  app = createApp({ model: fake, pingIntervalMs: 40 })
})

describe('errors: every bad input is a 4xx OpenAI envelope and the server keeps serving', () => {
  const chat = '/v1/chat/completions'
  const cases: Array<[string, string, unknown, number, string | null]> = [
    ['malformed JSON', chat, '{"messages": [', 400, 'invalid_json'],
    ['body not an object', chat, '[1,2]', 400, 'invalid_json'],
    ['wrong type', chat, { ...user('x'), temperature: 'hot' }, 400, 'invalid_value'],
    ['empty messages', chat, { messages: [] }, 400, 'invalid_value'],
    ['unknown model', chat, { ...user('x'), model: 'gpt-4o' }, 404, 'model_not_found'],
    ['n > 1', chat, { ...user('x'), n: 2 }, 400, 'unsupported_parameter'],
    [
      'tools',
      chat,
      { ...user('x'), tools: [{ type: 'function', function: { name: 'f' } }] },
      400,
      'unsupported_parameter',
    ],
    [
      'json_schema keyword the constrained decoder cannot honour (not), strict',
      chat,
      {
        ...user('x'),
        response_format: { type: 'json_schema', json_schema: { name: 'a', schema: { not: { type: 'string' } }, strict: true } },
      },
      400,
      'unsupported_parameter',
    ],
    [
      'json_schema string format, strict',
      chat,
      {
        ...user('x'),
        response_format: { type: 'json_schema', json_schema: { name: 'a', schema: { type: 'string', format: 'email' }, strict: true } },
      },
      400,
      'unsupported_parameter',
    ],
    [
      'image part',
      chat,
      user([{ type: 'image_url', image_url: { url: 'x' } }]),
      400,
      'unsupported_parameter',
    ],
    [
      'tool role',
      chat,
      { messages: [{ role: 'tool', content: 'x', tool_call_id: 'a' }] },
      400,
      'unsupported_parameter',
    ],
    [
      'max_tokens beyond context',
      chat,
      { ...user('x'), max_tokens: 65 },
      400,
      'context_length_exceeded',
    ],
    [
      'prompt + max_tokens beyond context',
      chat,
      { ...user('x'), max_tokens: 60 },
      400,
      'context_length_exceeded',
    ],
    [
      'prompt longer than context',
      '/v1/completions',
      { prompt: 'x'.repeat(100) },
      400,
      'context_length_exceeded',
    ],
    ['invalid token id', '/v1/completions', { prompt: [5, 100000] }, 400, 'invalid_token'],
    ['negative token id', '/v1/completions', { prompt: [[-1]] }, 400, 'invalid_token'],
    ['bad prompt type', '/v1/completions', { prompt: { a: 1 } }, 400, 'invalid_value'],
    ['best_of', '/v1/completions', { prompt: 'a', best_of: 3 }, 400, 'unsupported_parameter'],
    ['logit_bias key', chat, { ...user('x'), logit_bias: { abc: 1 } }, 400, null],
    ['detokenize bad id', '/detokenize', { tokens: [1, 9999] }, 400, 'invalid_token'],
    ['generate without prompt', '/generate', { max_tokens: 1 }, 400, null],
  ]
  for (const [name, path, body, status, code] of cases) {
    test(name, async () => {
      const r = await postApp(app, path, body)
      const err = await readJson(r)
      expect(r.status).toBe(status)
      expect(schemaIssues('ErrorResponse', err)).toEqual([])
      expect(err.error.code).toBe(code)
      expect(err.error.message.length).toBeGreaterThan(10)
      expect((await postApp(app, chat, { ...user('x'), max_tokens: 1 })).status).toBe(200)
      expect(fake.stats().running).toBe(0)
    })
  }

  test('an engine failure at submit -> 500 server_error envelope; the next request is served', async () => {
    fake.behaviour.submitError = { statusName: 'internal', message: 'boom in the engine' }
    const r = await postApp(app, chat, user('x'))
    const err = await readJson(r)
    expect(r.status).toBe(500)
    expect(schemaIssues('ErrorResponse', err)).toEqual([])
    expect([err.error.type, err.error.message]).toEqual(['server_error', 'boom in the engine'])
    fake.behaviour.submitError = null
    expect((await postApp(app, chat, { ...user('x'), max_tokens: 1 })).status).toBe(200)
  })

  test('queue full -> 429 + retry-after; in-flight bound -> 429; unknown route -> 404', async () => {
    fake.behaviour.submitError = { statusName: 'queue_full', message: 'queue full' }
    let r = await postApp(app, chat, user('x'))
    expect([r.status, r.headers.get('retry-after'), (await readJson(r)).error.type]).toEqual([
      429,
      '1',
      'rate_limit_error',
    ])
    fake.behaviour.submitError = null
    fake.behaviour.prefillDelayMs = 10_000
    const small = createApp({ model: fake, maxInFlight: 1 })
    const ac = new AbortController()
    const held = await postApp(small, chat, { ...user('x'), stream: true }, {}, ac.signal)
    r = await postApp(small, chat, user('x'))
    expect([r.status, r.headers.get('retry-after')]).toEqual([429, '1'])
    await held.body!.cancel()
    r = await app.request('/v1/nothing')
    expect([r.status, (await readJson(r)).error.code]).toEqual([404, 'not_found'])
  })

  test('body limit -> 413; API key -> 401 except /health; CORS when configured', async () => {
    const guarded = createApp({
      model: fake,
      bodyLimitBytes: 1000,
      apiKey: 'sk-test',
      corsOrigins: 'http://ui.local',
    })
    const auth = { authorization: 'Bearer sk-test' }
    let r = await postApp(guarded, chat, user('x'.repeat(2000)), auth)
    expect([r.status, (await readJson(r)).error.code]).toEqual([413, 'request_too_large'])
    r = await postApp(guarded, chat, user('x'))
    expect([r.status, (await readJson(r)).error.type]).toEqual([401, 'authentication_error'])
    expect((await postApp(guarded, chat, user('x'), { authorization: 'Bearer nope' })).status).toBe(
      401,
    )
    expect((await postApp(guarded, chat, { ...user('x'), max_tokens: 1 }, auth)).status).toBe(200)
    expect((await guarded.request('/health')).status).toBe(200)
    r = await guarded.request('/v1/models', { headers: { ...auth, origin: 'http://ui.local' } })
    expect(r.headers.get('access-control-allow-origin')).toBe('http://ui.local')
  })

  test('while the model loads: /health 503 + retry-after, model routes 503, then ready', async () => {
    let resolve!: (m: FakeModel) => void
    const loading = createApp({ model: new Promise<FakeModel>((r) => (resolve = r)) })
    let r = await loading.request('/health')
    expect([r.status, r.headers.get('retry-after')]).toEqual([503, '2'])
    expect(await readJson(r)).toEqual({
      error: { code: 503, message: 'Loading model', type: 'unavailable_error' },
    })
    r = await postApp(loading, chat, user('x'))
    expect([r.status, r.headers.get('retry-after')]).toEqual([503, '2'])
    expect((await loading.request('/metrics')).status).toBe(200)
    resolve(fake)
    await Bun.sleep(0)
    r = await loading.request('/health')
    expect([r.status, await readJson(r)]).toEqual([200, { status: 'ok' }])
  })
})
