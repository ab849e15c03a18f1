/**
 * Tool calls on /v1/chat/completions: a fake model replying in MiniCPM's call format (streaming and not give
 * the same calls, reasoning and content; OpenAI schema), the 400s (forced tool_choice without constrained
 * decoding, bad tool names, a model without a tool format), and the official openai client's tool flow on
 * the real tiny checkpoint (tools, an assistant tool call and a tool result sent back).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import Ajv2020 from 'ajv/dist/2020'
import OpenAI from 'openai'
import { createApp } from '../routes/app.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { minicpmToolFormat } from '../src/chat/tools/index.ts'
import type { Model } from '../src/index.ts'
import { FakeModel } from './helpers/fake-model.ts'
import { parseSse, postApp, readJson } from './helpers/http.ts'
import { schemaIssues } from './helpers/openai-schemas.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city.',
    parameters: {
      type: 'object',
      properties: { location: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
      required: ['location'],
    },
  },
} as const

const REPLY =
  '<|thought_start|>\nTwo cities, two calls.\n<|thought_end|>\n<|tool_call_start|>\n```python\n' +
  "get_weather(location='Beijing', unit='celsius')\nget_weather(location=\"Paris\", unit=None)\n```\n<|tool_call_end|>\n"

function fakeApp(reply: string) {
  const fake = new FakeModel()
  fake.toolFormat = minicpmToolFormat
  fake.info.nCtx = 4096
  fake.behaviour.reply = reply
  return createApp({ model: fake, pingIntervalMs: 1000 })
}

const body = (extra: object = {}) => ({
  messages: [{ role: 'user', content: 'Weather in Beijing and Paris?' }],
  tools: [WEATHER],
  max_tokens: 400,
  ...extra,
})

describe('tool calls through the route (fake model, MiniCPM format)', () => {
  test('non-streaming and streaming give the same calls, reasoning and content', async () => {
    const app = fakeApp(REPLY)
    const r = await readJson(await postApp(app, '/v1/chat/completions', body()))
    console.log(JSON.stringify(r.choices[0], null, 1))
    expect(schemaIssues('CreateChatCompletionResponse', r)).toEqual([])
    const choice = r.choices[0]
    expect(choice.finish_reason).toBe('tool_calls')
    expect(choice.message.content).toBeNull()
    expect(choice.message.reasoning_content).toBe('Two cities, two calls.')
    const calls = choice.message.tool_calls.map((c: { type: string; id: string; function: object }) => {
      expect(c.type).toBe('function')
      expect(c.id).toMatch(/^call_/)
      return c.function
    })
    expect(calls).toEqual([
      { name: 'get_weather', arguments: '{"location":"Beijing","unit":"celsius"}' },
      { name: 'get_weather', arguments: '{"location":"Paris","unit":null}' },
    ])

    const res = await postApp(app, '/v1/chat/completions', body({ stream: true }))
    const chunks = parseSse(await res.text()).data.filter((c) => c !== "[DONE]") as Array<{
      choices: Array<{ delta: Record<string, unknown>; finish_reason: string | null }>
    }>
    for (const c of chunks) expect(schemaIssues('CreateChatCompletionStreamResponse', c)).toEqual([])
    const deltas = chunks.map((c) => c.choices[0]!)
    const streamedCalls = deltas.flatMap((d) => (d.delta.tool_calls as Array<{ index: number; function: object }>) ?? [])
    expect(streamedCalls.map((c) => c.index)).toEqual([0, 1])
    expect(streamedCalls.map((c) => c.function)).toEqual(calls)
    expect(deltas.map((d) => d.delta.reasoning_content ?? '').join('')).toBe('Two cities, two calls.')
    expect(deltas.map((d) => d.delta.content ?? '').join('')).toBe('')
    expect(deltas.at(-1)!.finish_reason).toBe('tool_calls')
    // No marker text ever reaches the client.
    expect(JSON.stringify(deltas)).not.toContain('<|')
  })

  test('a malformed call stays text; tool_choice none does not parse', async () => {
    const bad = 'Sure.\n<|tool_call_start|>\n```python\nget_weather(Beijing)\n```\n<|tool_call_end|>\n'
    const r = await readJson(await postApp(fakeApp(bad), '/v1/chat/completions', body()))
    expect(r.choices[0].finish_reason).toBe('stop')
    expect(r.choices[0].message.content).toContain('get_weather(Beijing)')
    expect(r.choices[0].message.tool_calls).toBeUndefined()
    const none = await readJson(await postApp(fakeApp(REPLY), '/v1/chat/completions', body({ tool_choice: 'none' })))
    expect(none.choices[0].message.content).toBe(REPLY)
  })

  test('400s that name the problem', async () => {
    const app = fakeApp(REPLY)
    const cases: Array<[object, string, RegExp]> = [
      [{ tool_choice: 'required', tools: [] }, 'tool_choice', /needs tools/],
      [{ tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format', /forced tool call/],
      [{ tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice', /not among the tools/],
      [{ tools: [{ type: 'function', function: { name: 'get-weather' } }] }, 'tools.0.function.name', /Python identifier/],
      [{ tools: [{ type: 'retrieval' }] }, 'tools.0.type', /'function'/],
    ]
    for (const [extra, param, msg] of cases) {
      const r = await postApp(app, '/v1/chat/completions', body(extra))
      const e = (await readJson(r)).error
      console.log(r.status, e.param, e.message)
      expect(r.status).toBe(400)
      expect(e.param).toBe(param)
      expect(e.message).toMatch(msg)
    }
    // A model without a tool format keeps refusing tools.
    const plain = createApp({ model: new FakeModel() })
    const r = await postApp(plain, '/v1/chat/completions', body({ max_tokens: 4 }))
    expect(r.status).toBe(400)
    expect((await readJson(r)).error.message).toMatch(/no tool format/)
  })
})

describe('openai client tool flow (real tiny checkpoint, random weights)', () => {
  let model: Model
  let srv: RunningServer
  let client: OpenAI
  beforeAll(async () => {
    model = await loadTinyModel({ nCtx: 2048 })
    srv = await startServer({ model, port: 0, quiet: true })
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 })
  }, LOAD_TIMEOUT_MS)
  afterAll(async () => {
    await srv?.stop()
    model?.dispose()
  })

  test('tools with auto, then the call and its result sent back as history', async () => {
    expect(model.info.toolFormat).toBe('minicpm')
    const first = await client.chat.completions.create({
      model: model.info.id,
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [WEATHER],
      max_tokens: 8,
    })
    console.log('auto on random weights:', first.choices[0]!.finish_reason, JSON.stringify(first.choices[0]!.message))
    expect(['stop', 'length', 'tool_calls']).toContain(first.choices[0]!.finish_reason)
    const second = await client.chat.completions.create({
      model: model.info.id,
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 21}' },
      ],
      tools: [WEATHER],
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
    })
    let usage: OpenAI.CompletionUsage | null | undefined
    let finish: string | null = null
    for await (const ch of second) {
      if (ch.usage) usage = ch.usage
      if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason
    }
    console.log('with a tool turn:', finish, usage)
    expect(usage!.prompt_tokens).toBeGreaterThan(100) // the rendered # Functions block is in the prompt
  })

  test('tool_choice required and named: the constrained call parses and its arguments validate (ajv), from random weights', async () => {
    const ajv = new Ajv2020({ strict: false })
    const BOOK = {
      type: 'function',
      function: {
        name: 'book',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string', maxLength: 10 }, nights: { type: 'integer', minimum: 1, maximum: 9 }, vip: { type: 'boolean' } },
          required: ['city', 'nights'],
        },
      },
    } as const
    const weather = { ...WEATHER, function: { ...WEATHER.function, parameters: { ...WEATHER.function.parameters, properties: { ...WEATHER.function.parameters.properties, location: { type: 'string', maxLength: 12 } } } } }
    const specs = { get_weather: weather.function.parameters, book: BOOK.function.parameters } as Record<string, object>
    const choices = ['required', { type: 'function', function: { name: 'book' } }, { type: 'function', function: { name: 'get_weather' } }] as const
    for (const [i, tool_choice] of choices.entries()) {
      for (const stream of [false, true]) {
        const args = { model: model.info.id, messages: [{ role: 'user' as const, content: 'Book Paris' }], tools: [weather, BOOK], tool_choice, max_tokens: 300, seed: i }
        let calls: Array<{ function: { name: string; arguments: string } }> = []
        let finish: string | null = null
        if (!stream) {
          const r = await client.chat.completions.create(args as never)
          calls = (r.choices[0]!.message.tool_calls ?? []) as typeof calls
          finish = r.choices[0]!.finish_reason
        } else {
          for await (const ch of (await client.chat.completions.create({ ...(args as object), stream: true } as never)) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
            for (const tc of ch.choices[0]?.delta.tool_calls ?? []) calls.push(tc as (typeof calls)[0])
            if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason
          }
        }
        console.log(`  tool_choice ${JSON.stringify(tool_choice)} stream=${stream}: ${finish} ${calls.map((c) => `${c.function.name}(${c.function.arguments})`).join(' ')}`)
        expect(finish).toBe('tool_calls')
        expect(calls.length).toBeGreaterThan(0)
        for (const c of calls) {
          if (typeof tool_choice === 'object') expect(c.function.name).toBe(tool_choice.function.name)
          const ok = ajv.validate(specs[c.function.name]!, JSON.parse(c.function.arguments))
          if (!ok) throw new Error(`${c.function.name}(${c.function.arguments}): ${ajv.errorsText()}`)
        }
      }
    }
  }, 120_000)
})
