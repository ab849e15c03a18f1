/**
 * response_format json_schema `strict` on the random-weight tiny checkpoint. strict: true: the schema is honoured
 * completely and any keyword the decoder cannot enforce is a 400 naming it. strict: false or absent: those keywords
 * are dropped, the rest is enforced (ajv validates the output against the schema without them), and the response
 * names the dropped ones in x-minicpm-ignored-schema-keywords and a warning line in the log.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import Ajv2020 from 'ajv/dist/2020'
import { createApp } from '../routes/app.ts'
import { IGNORED_KEYWORDS_HEADER } from '../routes/sampling.ts'
import type { Model } from '../src/index.ts'
import { parseSse, postApp, readJson } from './helpers/http.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

let model: Model
let app: ReturnType<typeof createApp>
const logLines: string[] = []
const ajv = new Ajv2020({ strict: false })

beforeAll(async () => {
  model = await loadTinyModel({ nCtx: 2048 })
  app = createApp({ model, log: (line) => logLines.push(line) })
}, LOAD_TIMEOUT_MS)
afterAll(() => model?.dispose())

/** Keywords the decoder cannot enforce, each at a known JSON pointer, beside ones it enforces. */
const SCHEMA = {
  type: 'object',
  properties: {
    email: { type: 'string', format: 'email', maxLength: 20 },
    ids: { type: 'array', items: { type: 'integer', multipleOf: 3 }, uniqueItems: true, maxItems: 3 },
    code: { type: 'string', pattern: '^(?=[a-z])[a-z0-9]{3}$' },
    level: { enum: ['low', 'high'] },
  },
  required: ['email', 'ids', 'code', 'level'],
  additionalProperties: false,
}
const IGNORED = ['#/properties/email/format', '#/properties/ids/items/multipleOf', '#/properties/ids/uniqueItems', '#/properties/code/pattern']
/** The schema the output must still satisfy: SCHEMA less the ignored keywords. */
const ENFORCED = {
  ...SCHEMA,
  properties: {
    email: { type: 'string', maxLength: 20 },
    ids: { type: 'array', items: { type: 'integer' }, maxItems: 3 },
    code: { type: 'string' },
    level: { enum: ['low', 'high'] },
  },
}

const rf = (schema: object, strict?: boolean) => ({ type: 'json_schema', json_schema: { name: 'out', schema, ...(strict === undefined ? {} : { strict }) } })

async function ask(path: string, format: object, stream = false): Promise<{ r: Response; text: string }> {
  const common = { response_format: format, max_tokens: 120, seed: 3, temperature: 1, stream }
  const body = path === '/v1/chat/completions' ? { messages: [{ role: 'user', content: 'JSON' }], ...common } : { prompt: 'JSON:', ...common, ...(path === '/generate' ? { format: stream ? 'sse' : 'json' } : {}) }
  const r = await postApp(app, path, body)
  if (r.status !== 200) return { r, text: '' }
  if (!stream) {
    const b = (await r.clone().json()) as Record<string, any>
    return { r, text: path === '/generate' ? b.text : path === '/v1/completions' ? b.choices[0].text : b.choices[0].message.content }
  }
  let text = ''
  for (const f of parseSse(await r.clone().text()).data as Array<Record<string, any>>) {
    if (typeof f !== 'object') continue
    text += path === '/generate' ? (f.type === 'delta' ? f.text : '') : path === '/v1/completions' ? (f.choices?.[0]?.text ?? '') : (f.choices?.[0]?.delta?.content ?? '')
  }
  return { r, text }
}

describe('response_format json_schema strict', () => {
  test('strict: true: every unsupported keyword, and a pattern the decoder cannot compile, is a 400 naming it', async () => {
    const cases: Array<[string, object]> = [
      ['format', { type: 'string', format: 'email' }],
      ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }],
      ['multipleOf', { type: 'integer', multipleOf: 3 }],
      ['pattern', { type: 'string', pattern: '^(?=a)[a-z]+$' }],
      ['minimum', { type: 'number', minimum: 0.2, maximum: 0.8 }],
    ]
    for (const [kw, schema] of cases) {
      for (const path of ['/v1/chat/completions', '/v1/completions', '/generate']) {
        const { r } = await ask(path, rf(schema, true))
        const err = (await readJson(r)).error
        expect(r.status).toBe(400)
        expect(err.message).toContain(`'${kw}'`)
        expect(r.headers.get(IGNORED_KEYWORDS_HEADER)).toBeNull()
      }
    }
    const { r } = await ask('/v1/chat/completions', rf(SCHEMA.properties.code, true))
    console.log(`  strict: true, lookahead pattern: ${r.status} ${(await readJson(r)).error.message.slice(0, 150)}`)
  }, 120_000)

  test('strict: false or absent: the rest is enforced, the ignored keywords are named in a header and the log', async () => {
    let checked = 0
    for (const strict of [false, undefined]) {
      for (const path of ['/v1/chat/completions', '/v1/completions', '/generate']) {
        for (const stream of [false, true]) {
          logLines.length = 0
          const { r, text } = await ask(path, rf(SCHEMA, strict), stream)
          expect(r.status).toBe(200)
          const header = r.headers.get(IGNORED_KEYWORDS_HEADER)
          expect(header?.split(', ').sort()).toEqual([...IGNORED].sort())
          const value = JSON.parse(text)
          if (!ajv.validate(ENFORCED, value)) throw new Error(`${path} strict ${strict}: ${text} fails the enforced schema: ${ajv.errorsText()}`)
          const warning = logLines.find((l) => l.includes('ignored schema keywords'))
          expect(warning).toBeDefined()
          for (const k of IGNORED) expect(warning).toContain(k)
          checked++
          if (checked === 1) console.log(`  ${IGNORED_KEYWORDS_HEADER}: ${header}\n  log: ${warning}\n  output: ${text}`)
        }
      }
    }
    console.log(`  strict false/absent: ${checked} responses (chat, completions, /generate; streamed and not) validate the enforced schema and name ${IGNORED.length} ignored keywords`)
  }, 120_000)

  test('nothing ignored: no header, and strict: true accepts a fully supported schema', async () => {
    for (const strict of [true, false]) {
      const { r, text } = await ask('/v1/chat/completions', rf(ENFORCED, strict))
      expect(r.status).toBe(200)
      expect(r.headers.get(IGNORED_KEYWORDS_HEADER)).toBeNull()
      expect(ajv.validate(ENFORCED, JSON.parse(text))).toBe(true)
    }
  }, 60_000)
})
