/**
 * Constrained decoding (response_format) on the random-weight tiny checkpoint: every output of 24 schemas parses
 * and validates under ajv (a validator library, not hand checks), on the chat, completions and native endpoints;
 * unsupported keywords are a 400 naming the keyword. Prints the mask time per step and the batch throughput
 * with and without constrained requests in the batch.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import Ajv2020 from 'ajv/dist/2020'
import { createApp } from '../routes/app.ts'
import type { Model } from '../src/index.ts'
import { grammarStats } from '../src/runtime/grammar.ts'
import { parseSse, postApp, readJson } from './helpers/http.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

type Schema = Record<string, unknown>
const str = (maxLength = 12): Schema => ({ type: 'string', maxLength })

// Strings carry maxLength (or are enums / patterns): a random model almost never picks the closing quote by
// itself among 73K tokens, so an unbounded string would run to max_tokens.
const SCHEMAS: Array<[string, Schema, boolean]> = [
  ['integer', { type: 'integer' }, true],
  ['number', { type: 'number' }, true],
  ['boolean', { type: 'boolean' }, true],
  ['null', { type: 'null' }, true],
  ['bounded string', str(8), true],
  ['enum', { enum: ['red', 'green', 'blue', 42, null] }, true],
  ['const', { const: { ok: true } }, true],
  ['int range', { type: 'integer', minimum: -5, maximum: 300 }, true],
  ['pattern', { type: 'string', pattern: '^[a-z]{2,5}-[0-9]{3}$' }, true],
  ['flat object', { type: 'object', properties: { a: { type: 'integer' }, b: str() }, required: ['a', 'b'] }, true],
  [
    'optional fields',
    { type: 'object', properties: { id: { type: 'integer' }, note: str(), flag: { type: 'boolean' } }, required: ['id'], additionalProperties: false },
    false,
  ],
  ['array bounds', { type: 'array', items: { type: 'integer' }, minItems: 2, maxItems: 4 }, true],
  ['array of enums', { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 5 }, true],
  ['tuple', { type: 'array', prefixItems: [{ type: 'integer' }, str(4), { type: 'boolean' }], items: false }, true],
  [
    'nested objects',
    {
      type: 'object',
      properties: {
        user: { type: 'object', properties: { name: str(), age: { type: 'integer', minimum: 0, maximum: 150 } }, required: ['name', 'age'] },
        tags: { type: 'array', items: str(6), maxItems: 3 },
      },
      required: ['user', 'tags'],
    },
    true,
  ],
  ['anyOf scalar', { anyOf: [{ type: 'integer' }, { type: 'boolean' }, { type: 'null' }] }, true],
  [
    'anyOf objects',
    {
      anyOf: [
        { type: 'object', properties: { kind: { const: 'circle' }, r: { type: 'number' } }, required: ['kind', 'r'] },
        { type: 'object', properties: { kind: { const: 'square' }, side: { type: 'integer' } }, required: ['kind', 'side'] },
      ],
    },
    true,
  ],
  ['nullable type list', { type: 'object', properties: { v: { type: ['integer', 'null'] } }, required: ['v'] }, true],
  [
    '$ref and $defs',
    {
      type: 'object',
      properties: { home: { $ref: '#/$defs/addr' }, work: { $ref: '#/$defs/addr' } },
      required: ['home', 'work'],
      $defs: { addr: { type: 'object', properties: { city: str(), zip: { type: 'string', pattern: '^[0-9]{5}$' } }, required: ['city', 'zip'] } },
    },
    true,
  ],
  [
    'array of objects',
    {
      type: 'array',
      items: { type: 'object', properties: { x: { type: 'integer' }, y: { type: 'integer' } }, required: ['x', 'y'] },
      minItems: 1,
      maxItems: 3,
    },
    true,
  ],
  ['string length range', { type: 'string', minLength: 3, maxLength: 6 }, true],
  ['deep nesting', { type: 'object', properties: { a: { type: 'object', properties: { b: { type: 'object', properties: { c: { type: 'array', items: { type: 'boolean' }, maxItems: 2 } }, required: ['c'] } }, required: ['b'] } }, required: ['a'] }, true],
  ['number range', { type: 'number', minimum: 0, maximum: 1 }, true],
  [
    'enum in object',
    { type: 'object', properties: { level: { enum: ['low', 'mid', 'high'] }, score: { type: 'integer', minimum: 0, maximum: 10 } }, required: ['level', 'score'] },
    false,
  ],
]

const UNSUPPORTED: Array<[string, Schema]> = [
  ['not', { not: { type: 'string' } }],
  ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }],
  ['if', { type: 'object', if: { properties: { a: { const: 1 } } }, then: { required: ['b'] } }],
  ['multipleOf', { type: 'object', properties: { n: { type: 'integer', multipleOf: 3 } } }],
  ['patternProperties', { type: 'object', patternProperties: { '^x': { type: 'integer' } } }],
]

let model: Model
let app: ReturnType<typeof createApp>
const ajv = new Ajv2020({ strict: false })

beforeAll(async () => {
  model = await loadTinyModel({ nCtx: 2048 })
  app = createApp({ model })
}, LOAD_TIMEOUT_MS)
afterAll(() => model?.dispose())

function validate(schema: Schema, text: string, what: string): void {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (e) {
    throw new Error(`${what}: output does not parse: ${JSON.stringify(text)} (${(e as Error).message})`)
  }
  const ok = ajv.validate(schema, value)
  if (!ok) throw new Error(`${what}: ${JSON.stringify(text)} fails the schema: ${ajv.errorsText()}`)
}

const rf = (schema: Schema, strict: boolean) => ({ type: 'json_schema', json_schema: { name: 'out', schema, strict } })

describe('response_format on the random-weight model', () => {
  test('24 schemas through /v1/chat/completions: every output parses and validates (ajv)', async () => {
    expect(SCHEMAS.length).toBeGreaterThanOrEqual(20)
    const results = await Promise.all(
      SCHEMAS.map(async ([name, schema, strict], i) => {
        const r = await postApp(app, '/v1/chat/completions', {
          messages: [{ role: 'user', content: `Answer in JSON (${name}).` }],
          response_format: rf(schema, strict),
          max_tokens: 400,
          seed: i,
        })
        const body = await readJson(r)
        expect(r.status).toBe(200)
        return [name, schema, body.choices[0].message.content as string, body.choices[0].finish_reason] as const
      }),
    )
    for (const [name, schema, text, finish] of results) {
      console.log(`  ${name.padEnd(20)} ${finish.padEnd(6)} ${text.length > 100 ? text.slice(0, 100) + '…' : text}`)
      expect(finish).toBe('stop')
      validate(schema, text, name)
    }
  }, 120_000)

  test('/v1/completions (streamed) and /generate (json) honour the same schemas', async () => {
    for (const [name, schema, strict] of SCHEMAS.slice(8, 16)) {
      const c = await postApp(app, '/v1/completions', { prompt: 'JSON:', response_format: rf(schema, strict), max_tokens: 400, stream: true })
      expect(c.status).toBe(200)
      const frames = parseSse(await c.text()).data.filter((d): d is { choices: Array<{ text: string }> } => typeof d === 'object' && d !== null && 'choices' in d)
      validate(schema, frames.map((f) => f.choices[0]?.text ?? '').join(''), `completions ${name}`)
      const g = await readJson(postApp(app, '/generate', { prompt: 'JSON:', response_format: rf(schema, strict), max_tokens: 400, format: 'json' }))
      expect(g.finish_reason).toBe('stop')
      validate(schema, g.text, `generate ${name}`)
    }
  }, 120_000)

  test('json_object gives a JSON object (free-form keys: random weights may run to max_tokens)', async () => {
    let stops = 0
    for (let seed = 0; seed < 4; seed++) {
      const body = await readJson(
        postApp(app, '/v1/chat/completions', { messages: [{ role: 'user', content: 'JSON please' }], response_format: { type: 'json_object' }, max_tokens: 400, seed }),
      )
      const text = body.choices[0].message.content as string
      console.log(`  json_object seed ${seed}: ${body.choices[0].finish_reason} ${text.slice(0, 80)}`)
      if (body.choices[0].finish_reason === 'stop') {
        stops++
        validate({ type: 'object' }, text, 'json_object')
      }
    }
    expect(stops).toBeGreaterThan(0)
  }, 60_000)

  test('unsupported keywords are a 400 naming the keyword', async () => {
    for (const [kw, schema] of UNSUPPORTED) {
      for (const path of ['/v1/chat/completions', '/v1/completions', '/generate']) {
        const body = path === '/v1/chat/completions' ? { messages: [{ role: 'user', content: 'x' }] } : { prompt: 'x' }
        const r = await postApp(app, path, { ...body, response_format: rf(schema, true), max_tokens: 4 })
        const err = (await readJson(r)).error
        expect(r.status).toBe(400)
        expect(err.message).toContain(`'${kw}'`)
      }
    }
    const r = await postApp(app, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], response_format: { type: 'xml' } })
    expect(r.status).toBe(400)
    console.log('  e.g.:', (await readJson(postApp(app, '/generate', { prompt: 'x', response_format: rf(UNSUPPORTED[0]![1], true) }))).error.message.slice(0, 120))
  })

  test('measured: mask time per step, batch throughput with and without constrained requests', async () => {
    const plain = { prompt: 'Once upon a time', maxTokens: 96, ignoreEos: true, temperature: 1 }
    const schema: Schema = { type: 'array', items: { type: 'integer', minimum: 0, maximum: 9 }, minItems: 40, maxItems: 40 }
    const run = async (req: object): Promise<{ tokens: number; ms: number }> => {
      const t0 = performance.now()
      let tokens = 0
      for await (const ev of model.generate(req)) if (ev.type === 'delta') tokens += ev.tokens.length
      return { tokens, ms: performance.now() - t0 }
    }
    const batch = async (nPlain: number, nMasked: number) => {
      const t0 = performance.now()
      const plainRuns = Array.from({ length: nPlain }, (_, i) => run({ ...plain, seed: i }))
      const masked = Array.from({ length: nMasked }, (_, i) => run({ prompt: 'JSON:', maxTokens: 400, seed: i, responseFormat: { type: 'json_schema', schema, strict: true } }))
      const p = await Promise.all(plainRuns)
      const m = await Promise.all(masked)
      const wall = performance.now() - t0
      const pt = p.reduce((a, x) => a + x.tokens, 0)
      const mt = m.reduce((a, x) => a + x.tokens, 0)
      const plainTps = p.length ? (pt / Math.max(...p.map((x) => x.ms))) * 1000 : 0
      return { wall, pt, mt, plainTps, allTps: ((pt + mt) / wall) * 1000, maskedTps: m.length ? (mt / Math.max(...m.map((x) => x.ms))) * 1000 : 0 }
    }
    await batch(2, 1) // warm up (grammar compiled, pool threads up)
    const s0 = { ...grammarStats }
    const alone = await batch(8, 0)
    const sixteen = await batch(16, 0) // the same batch size with no constraint: what the extra rows cost
    const mixed = await batch(8, 8)
    const onlyMasked = await batch(0, 8)
    const masks = grammarStats.masks - s0.masks
    const meanUs = (grammarStats.maskUs - s0.maskUs) / masks
    console.log(`  mask: ${masks} masks, mean ${meanUs.toFixed(1)} us per step (includes the JS-WASM call), worst ${grammarStats.maxMaskUs.toFixed(0)} us since load`)
    console.log(`  8 plain alone:        ${alone.pt} tokens, plain ${alone.plainTps.toFixed(0)} tok/s, all ${alone.allTps.toFixed(0)} tok/s`)
    console.log(`  16 plain:             ${sixteen.pt} tokens, all ${sixteen.allTps.toFixed(0)} tok/s (per request ${(sixteen.plainTps / 16).toFixed(0)})`)
    console.log(`  8 plain + 8 masked:   plain ${mixed.plainTps.toFixed(0)} tok/s (per request ${(mixed.plainTps / 8).toFixed(0)}), masked ${mixed.maskedTps.toFixed(0)} tok/s, all ${mixed.allTps.toFixed(0)} tok/s`)
    console.log(`  8 masked alone:       ${onlyMasked.mt} tokens, ${onlyMasked.maskedTps.toFixed(0)} tok/s`)
    console.log(`  compiles ${grammarStats.compiles} (mean ${(grammarStats.compileMs / Math.max(1, grammarStats.compiles)).toFixed(0)} ms), cache hits ${grammarStats.cacheHits}`)
    expect(alone.pt).toBe(8 * 96)
    expect(mixed.pt).toBe(8 * 96)
    expect(masks).toBeGreaterThan(0)
  }, 120_000)
})
