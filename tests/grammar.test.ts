/**
 * Constrained decoding (response_format) on the random-weight tiny checkpoint: every output of the schema suite (helpers/json-schemas.ts) parses
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
import { SCHEMAS, UNSUPPORTED, type Schema } from './helpers/json-schemas.ts'

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
  test(`${SCHEMAS.length} schemas through /v1/chat/completions: every output parses and validates (ajv)`, async () => {
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

  test('json_object gives a JSON object, ending within max_tokens even with free-form keys and strings', async () => {
    for (let seed = 0; seed < 4; seed++) {
      const body = await readJson(
        postApp(app, '/v1/chat/completions', { messages: [{ role: 'user', content: 'JSON please' }], response_format: { type: 'json_object' }, max_tokens: 400, seed }),
      )
      const text = body.choices[0].message.content as string
      console.log(`  json_object seed ${seed}: ${body.choices[0].finish_reason} ${text.slice(0, 80)}`)
      expect(body.choices[0].finish_reason).toBe('stop')
      validate({ type: 'object' }, text, 'json_object')
    }
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
    const needs = grammarStats.needs - s0.needs
    const needUs = grammarStats.needUs - s0.needUs
    const steps = masks + grammarStats.forced - s0.forced
    console.log(`  mask: ${masks} masks, mean ${meanUs.toFixed(1)} us per step (includes the JS-WASM call), worst ${grammarStats.maxMaskUs.toFixed(0)} us since load`)
    console.log(
      `  closing: ${needs} searches (mean ${(needUs / Math.max(1, needs)).toFixed(1)} us), ${grammarStats.forced - s0.forced} forced steps; ` +
        `per constrained step, masks and searches: ${((grammarStats.maskUs - s0.maskUs + needUs) / steps).toFixed(1)} us over ${steps} steps`,
    )
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
