/**
 * Budget-aware constrained decoding on the random-weight tiny checkpoint: with max_tokens just above the shortest
 * valid output (and a few values above), sampled over several seeds, every output of every schema in the suite
 * parses, validates under ajv and ends with finish_reason "stop", on chat and completions (streamed and not) and
 * native /generate (json and SSE). Below the minimum, a 400 names max_tokens and the minimum up front.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import Ajv2020 from 'ajv/dist/2020'
import { createApp } from '../routes/app.ts'
import type { Model } from '../src/index.ts'
import { grammarService, grammarStats } from '../src/runtime/grammar.ts'
import { PieceIndex } from '../src/runtime/grammar-close.ts'
import { parseSse, postApp, readJson } from './helpers/http.ts'
import { SCHEMAS, type Schema } from './helpers/json-schemas.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

let model: Model
let app: ReturnType<typeof createApp>
const ajv = new Ajv2020({ strict: false })

beforeAll(async () => {
  model = await loadTinyModel({ nCtx: 2048 })
  app = createApp({ model })
}, LOAD_TIMEOUT_MS)
afterAll(() => model?.dispose())

type Format = Record<string, unknown>
const rf = (schema: Schema, strict: boolean): Format => ({ type: 'json_schema', json_schema: { name: 'out', schema, strict } })

interface Outcome {
  status: number
  text: string
  finish: string
  error?: { message: string; param: string | null }
}

/** The six ways a client asks: chat and completions, each streamed or not, and /generate as JSON or SSE. */
const VARIANTS = ['chat', 'chat stream', 'completions', 'completions stream', 'generate json', 'generate sse'] as const
type Variant = (typeof VARIANTS)[number]

async function ask(variant: Variant, format: Format, maxTokens: number, seed: number): Promise<Outcome> {
  const sampling = { response_format: format, max_tokens: maxTokens, seed, temperature: 1 }
  const stream = variant.endsWith('stream') || variant === 'generate sse'
  const r =
    variant.startsWith('chat')
      ? await postApp(app, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Answer in JSON.' }], stream, ...sampling })
      : variant.startsWith('completions')
        ? await postApp(app, '/v1/completions', { prompt: 'JSON:', stream, ...sampling })
        : await postApp(app, '/generate', { prompt: 'JSON:', format: stream ? 'sse' : 'json', ...sampling })
  if (r.status !== 200) return { status: r.status, text: '', finish: '', error: (await readJson(r)).error }
  if (!stream) {
    const body = await readJson(r)
    if (variant === 'generate json') return { status: 200, text: body.text, finish: body.finish_reason }
    const c = body.choices[0]
    return { status: 200, text: variant === 'chat' ? c.message.content : c.text, finish: c.finish_reason }
  }
  let text = ''
  let finish = ''
  for (const f of parseSse(await r.text()).data) {
    if (typeof f !== 'object' || f === null) continue
    const ev = f as Record<string, any>
    if (variant === 'generate sse') {
      if (ev.type === 'delta') text += ev.text
      if (ev.type === 'finish') finish = ev.finish_reason
      continue
    }
    const c = ev.choices?.[0]
    if (!c) continue
    text += (variant === 'chat stream' ? c.delta?.content : c.text) ?? ''
    if (c.finish_reason) finish = c.finish_reason
  }
  return { status: 200, text, finish }
}

/** The minimum the server names in its 400 for max_tokens 1 (every schema needs at least a token and the stop). */
async function minimumOf(format: Format): Promise<number> {
  const o = await ask('chat', format, 1, 0)
  expect(o.status).toBe(400)
  expect(o.error!.param).toBe('max_tokens')
  expect(o.error!.message).toContain('max_tokens 1 is below the minimum of')
  return Number(/at least (\d+)/.exec(o.error!.message)![1])
}

function check(schema: Schema, o: Outcome, what: string): string | null {
  if (o.status !== 200) return `${what}: HTTP ${o.status} ${o.error?.message}`
  if (o.finish !== 'stop') return `${what}: finish_reason ${o.finish}: ${JSON.stringify(o.text)}`
  let value: unknown
  try {
    value = JSON.parse(o.text)
  } catch {
    return `${what}: does not parse: ${JSON.stringify(o.text)}`
  }
  return ajv.validate(schema, value) ? null : `${what}: fails the schema (${ajv.errorsText()}): ${JSON.stringify(o.text)}`
}

const OVER_MINIMUM = [0, 1, 3, 8, 20, 60]
const SEEDS = [0, 1, 2]

describe('budget-aware constrained decoding on the random-weight model', () => {
  test('the shortest output found for each schema parses and validates, and the tokens forced for it spell it', async () => {
    const { tokenizer } = model
    const nVocab = model.info.nVocab
    const service = grammarService(tokenizer, nVocab)
    const pieces = new PieceIndex(tokenizer, nVocab)
    const eos = tokenizer.eosIds.filter((t) => t < nVocab)
    const failures: string[] = []
    let chars = 0
    let tokens = 0
    for (const [name, schema, strict] of SCHEMAS) {
      const d = await service.matcher({ type: 'json_schema', schema, strict }, eos, 4096)
      const text = d.shortest
      d.dispose()
      if (text === null) {
        failures.push(`${name}: no closing found`)
        continue
      }
      const ids = pieces.spell(text)
      const spelled = new TextDecoder().decode(Buffer.concat(ids.map((id) => tokenizer.tokenBytes(id))))
      if (spelled !== text) failures.push(`${name}: tokens spell ${JSON.stringify(spelled)}, not ${JSON.stringify(text)}`)
      try {
        if (!ajv.validate(schema, JSON.parse(text))) failures.push(`${name}: ${text} fails the schema: ${ajv.errorsText()}`)
      } catch {
        failures.push(`${name}: ${JSON.stringify(text)} does not parse`)
      }
      chars += text.length
      tokens += ids.length
    }
    console.log(`  shortest outputs: ${SCHEMAS.length} schemas, ${chars} characters in ${tokens} tokens, ${failures.length} problems`)
    for (const f of failures) console.log(`  FAIL ${f}`)
    expect(failures).toEqual([])
  })

  test('every schema, max_tokens from its minimum up, 3 seeds, 6 endpoint variants: all parse, validate, stop', async () => {
    const s0 = { ...grammarStats }
    let outputs = 0
    let parsedValid = 0
    const failures: string[] = []
    const minima: string[] = []
    for (const [name, schema, strict] of SCHEMAS) {
      const format = rf(schema, strict)
      const least = await minimumOf(format)
      minima.push(`${name} ${least}`)
      const below = await ask('completions', format, least - 1, 0)
      if (below.status !== 400 || !below.error!.message.includes(`minimum of ${least} tokens`)) {
        failures.push(`${name}: max_tokens ${least - 1} gave HTTP ${below.status}, not the 400 naming ${least}`)
      }
      const runs = OVER_MINIMUM.flatMap((over, i) =>
        SEEDS.map(async (seed, j) => {
          const variant = VARIANTS[(i * SEEDS.length + j) % VARIANTS.length]!
          const o = await ask(variant, format, least + over, seed)
          return check(schema, o, `${name} [${variant}, max_tokens ${least + over}, seed ${seed}]`)
        }),
      )
      for (const problem of await Promise.all(runs)) {
        outputs++
        if (problem) failures.push(problem)
        else parsedValid++
      }
    }
    const needs = grammarStats.needs - s0.needs
    console.log(`  minimum tokens per schema: ${minima.join(', ')}`)
    console.log(
      `  budget suite: ${SCHEMAS.length} schemas, ${outputs} outputs, ${parsedValid} parse + validate (ajv) + finish stop, ` +
        `${failures.length} failed; closings ${grammarStats.closings - s0.closings} ` +
        `(${grammarStats.closingsShort - s0.closingsShort} short), forced steps ${grammarStats.forced - s0.forced}, ` +
        `closing searches ${needs} (mean ${((grammarStats.needUs - s0.needUs) / Math.max(1, needs)).toFixed(1)} us)`,
    )
    for (const f of failures.slice(0, 10)) console.log(`  FAIL ${f}`)
    expect(outputs).toBe(SCHEMAS.length * OVER_MINIMUM.length * SEEDS.length)
    expect(failures).toEqual([])
  }, 600_000)

  test('json_object: 24 seeded samples with small max_tokens all parse as objects and stop', async () => {
    const format = { type: 'json_object' }
    const least = await minimumOf(format)
    const outcomes = await Promise.all(
      Array.from({ length: 24 }, async (_, seed) => {
        const variant = VARIANTS[seed % VARIANTS.length]!
        const maxTokens = least + (seed % 8) * 6
        return [variant, maxTokens, seed, await ask(variant, format, maxTokens, seed)] as const
      }),
    )
    let ok = 0
    let nonEmpty = 0
    for (const [variant, maxTokens, seed, o] of outcomes) {
      const problem = check({ type: 'object' }, o, `json_object [${variant}, max_tokens ${maxTokens}, seed ${seed}]`)
      if (problem) console.log(`  FAIL ${problem}`)
      else ok++
      if (o.text.length > 2) nonEmpty++
    }
    console.log(`  json_object: minimum ${least} tokens; ${outcomes.length} samples (max_tokens ${least}..${least + 42}), ${ok} parse as objects and stop, ${nonEmpty} with content`)
    expect(ok).toBe(outcomes.length)
  }, 300_000)
})
