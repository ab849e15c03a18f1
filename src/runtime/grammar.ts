/**
 * Constrained decoding: response_format json_object / json_schema compiled by XGrammar (@mlc-ai/web-xgrammar,
 * WebAssembly) into a grammar whose matcher gives, before each token, the bitset of tokens that keep the output
 * a prefix of a valid document. generate() hands that bitset to the engine (minicpm_engine_set_mask), which
 * applies it in the request's sampler; the request sits out the steps until its next mask is set, so the other
 * requests of the batch never wait for it.
 *
 * One GrammarService per tokenizer: the vocabulary is set up once (encoded as SentencePiece byte-fallback
 * pieces), and compiled grammars are cached by (schema text, strict).
 */
import { GrammarCompiler, GrammarMatcher, Testings, TokenizerInfo, type CompiledGrammar } from '@mlc-ai/web-xgrammar'
import { CALL_END, CALL_START } from '../chat/tools/minicpm'
import type { Tokenizer } from '../tokenizer/index'
import type { ResponseFormat } from '../types'
import { patternsOf, prepareSchema, UnsupportedSchemaError, withoutPatterns } from './schema-check'
import { PieceIndex } from './grammar-close'
import { ConstrainedDecoder, grammarStats } from './grammar-decoder'

export { ConstrainedDecoder, grammarStats }

/** The vocabulary as XGrammar's byte-fallback pieces ('▁' for space, '<0xNN>' for raw bytes, '' = special). */
function encodedVocab(tok: Tokenizer, nVocab: number): string[] {
  const dec = new TextDecoder('utf-8', { fatal: true })
  const out: string[] = []
  for (let i = 0; i < nVocab; i++) {
    if (i >= tok.vocabSize || tok.specialIds.has(i)) {
      out.push('')
      continue
    }
    const b = tok.tokenBytes(i)
    try {
      out.push(dec.decode(b).replaceAll(' ', '\u2581'))
    } catch {
      out.push(b.length === 1 ? `<0x${b[0]!.toString(16).toUpperCase().padStart(2, '0')}>` : '')
    }
  }
  return out
}

/**
 * The tokens with no byte below 0x20. XGrammar's JSON string rule lets raw control characters through, which
 * JSON.parse rejects; compact JSON has no whitespace outside strings, so no JSON output needs them.
 */
function withoutControlChars(tok: Tokenizer, nVocab: number): Uint32Array {
  const bits = new Uint32Array((nVocab + 31) >> 5)
  for (let i = 0; i < nVocab; i++) {
    const b = i < tok.vocabSize && !tok.specialIds.has(i) ? tok.tokenBytes(i) : new Uint8Array(0)
    if (!b.some((x) => x < 0x20)) bits[i >> 5]! |= 1 << (i & 31)
  }
  return bits
}

/** max_tokens (or the room the context leaves) below the shortest valid output: mapped to HTTP 400. */
export class BudgetTooSmallError extends Error {
  override name = 'BudgetTooSmallError'
  readonly statusName = 'invalid_argument'
  readonly param = 'max_tokens'
}

const CACHE_MAX = 64

/** A compiled grammar and the schema keywords (JSON pointers) left out of it. */
interface Compiled {
  grammar: CompiledGrammar
  ignored: string[]
}

/** The patterns of a schema that do not compile on their own (XGrammar's regex converter refuses them). */
async function refusedPatterns(
  schema: unknown,
  compile: (s: unknown) => Promise<CompiledGrammar>,
): Promise<Array<{ at: string; pattern: string }>> {
  const bad: Array<{ at: string; pattern: string }> = []
  for (const p of patternsOf(schema)) {
    try {
      ;(await compile({ type: 'string', pattern: p.pattern })).dispose()
    } catch {
      bad.push(p)
    }
  }
  return bad
}

export class GrammarService {
  #compiler: Promise<GrammarCompiler>
  #cache = new Map<string, Promise<Compiled>>()
  #pieces: PieceIndex | null = null
  #noControl: Uint32Array | null = null
  readonly setupMs: Promise<number>

  constructor(
    private readonly tok: Tokenizer,
    readonly nVocab: number,
  ) {
    const t0 = performance.now()
    this.#compiler = (async () => {
      const eos = tok.eosIds.filter((t) => t < nVocab)
      const info = await TokenizerInfo.createTokenizerInfo(encodedVocab(tok, nVocab), 'BYTE_FALLBACK', false, nVocab, eos)
      return GrammarCompiler.createGrammarCompiler(info, false)
    })()
    this.setupMs = this.#compiler.then(() => performance.now() - t0)
  }

  /**
   * The compiled grammar of a response format (cached by schema text and strictness); throws
   * UnsupportedSchemaError. A json_schema with strict: false compiles without the keywords the engine cannot
   * honour (unsupported keywords, patterns its regex converter refuses); their JSON pointers are added to
   * fmt.ignored so that the caller can say so.
   */
  async compile(fmt: ResponseFormat): Promise<CompiledGrammar> {
    const strict = fmt.type === 'json_schema' && fmt.strict === true
    const key =
      fmt.type === 'json_object'
        ? 'json_object'
        : fmt.type === 'tool_call'
          ? `tools:${JSON.stringify(fmt.tools)}`
          : `${strict ? 'strict' : 'loose'}:${JSON.stringify(fmt.schema)}`
    let entry = this.#cache.get(key)
    if (entry) {
      grammarStats.cacheHits++
      this.#cache.delete(key) // LRU: move to the back
      this.#cache.set(key, entry)
    } else {
      entry = this.#build(fmt, strict)
      entry.catch(() => this.#cache.delete(key))
      this.#cache.set(key, entry)
      if (this.#cache.size > CACHE_MAX) {
        const [oldest, old] = this.#cache.entries().next().value!
        this.#cache.delete(oldest)
        old.then((c) => c.grammar.dispose(), () => {})
      }
    }
    const { grammar, ignored } = await entry
    if (fmt.type === 'json_schema' && ignored.length > 0) fmt.ignored = [...new Set([...(fmt.ignored ?? []), ...ignored])]
    return grammar
  }

  #build(fmt: ResponseFormat, strict: boolean): Promise<Compiled> {
    const prepared = fmt.type === 'json_schema' ? prepareSchema(fmt.schema, strict) : { schema: null, ignored: [] }
    const schema = prepared.schema
    const ignored = prepared.ignored
    const tools =
      fmt.type === 'tool_call'
        ? fmt.tools.map((t) => ({ ...t, parameters: prepareSchema(t.parameters ?? { type: 'object' }, true, `#/tools/${t.name}`).schema as Record<string, unknown> }))
        : []
    const t0 = performance.now()
    return this.#compiler.then(async (c) => {
      // Compact output (no free whitespace): a weak or random model cannot wander into endless spaces.
      // XGrammar's strict mode for both OpenAI modes: properties and items the schema does not name are not
      // generated (they are allowed, never required, so the output validates either way), which keeps a weak
      // model from wandering into endless free-form keys.
      const jsonSchema = (x: unknown) => c.compileJSONSchema(JSON.stringify(x), false, -1, [',', ':'], true)
      let grammar: CompiledGrammar
      try {
        grammar =
          fmt.type === 'json_object'
            ? await c.compileJSONSchema('{"type":"object"}', false, -1, [',', ':'], false)
            : fmt.type === 'tool_call'
              ? await c.compileGrammar(await toolCallEbnf(tools))
              : await jsonSchema(schema)
      } catch (e) {
        const bad = fmt.type === 'json_schema' ? await refusedPatterns(schema, jsonSchema) : []
        if (bad.length === 0) throw new UnsupportedSchemaError(`the JSON schema could not be compiled: ${(e as Error).message ?? e}`, 'schema')
        if (strict) {
          throw new UnsupportedSchemaError(
            `JSON schema keyword 'pattern' (at ${bad[0]!.at}): the regular expression ${JSON.stringify(bad[0]!.pattern)} ` +
              "is not supported by this server's constrained decoder (no lookaround, \\p{...} classes or backreferences); " +
              'with strict: false it is ignored instead',
            'pattern',
          )
        }
        ignored.push(...bad.map((b) => b.at))
        grammar = await jsonSchema(withoutPatterns(schema, new Set(bad.map((b) => b.at))))
      }
      grammarStats.compiles++
      grammarStats.compileMs += performance.now() - t0
      return { grammar, ignored }
    })
  }

  /**
   * A matcher for one request; stopIds end the document (the engine stops on them too). budget: the tokens the
   * request may generate, stop token included; BudgetTooSmallError when the shortest valid output needs more.
   */
  async matcher(fmt: ResponseFormat, stopIds: number[], budget: number, what = `max_tokens ${budget}`): Promise<ConstrainedDecoder> {
    const g = await this.compile(fmt)
    const m = await GrammarMatcher.createGrammarMatcher(g, stopIds.length > 0 ? stopIds : undefined)
    this.#pieces ??= new PieceIndex(this.tok, this.nVocab)
    const allowed = fmt.type === 'tool_call' ? null : (this.#noControl ??= withoutControlChars(this.tok, this.nVocab))
    const d = new ConstrainedDecoder(m, this.nVocab, this.#pieces, stopIds[0] ?? -1, budget, allowed)
    const least = d.minTokens
    if (least !== null && least > budget) {
      d.dispose()
      throw new BudgetTooSmallError(
        `${what} is below the minimum of ${least} tokens that the shortest valid output for this ` +
          `response_format needs (${JSON.stringify(d.shortest)} and the end token); raise max_tokens to at least ${least}`,
      )
    }
    return d
  }
}

/** One JSON-schema value as EBNF rules whose names all start with prefix (root becomes prefix + 'root'). */
async function valueRules(schema: unknown, prefix: string): Promise<string> {
  const ebnf = await Testings._jsonSchemaToEBNF(JSON.stringify(schema), false, -1, [', ', ': '], true)
  const lines = ebnf.split('\n').filter((l) => l.includes('::='))
  const names = new Set(lines.map((l) => l.slice(0, l.indexOf('::=')).trim()))
  const token = /"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z_][A-Za-z0-9_-]*/g
  return lines
    .map((l) => {
      const at = l.indexOf('::=')
      const body = l
        .slice(at + 3)
        .replace(token, (t) => (names.has(t) ? prefix + t : t))
        // A string ends where JSON continues; in a Python call a ')' may follow too.
        .replaceAll('[,}\\]:])', '[,}\\]:)])')
      return `${prefix}${l.slice(0, at).trim()} ::=${body}`
    })
    .join('\n')
}

const lit = (s: string) => JSON.stringify(s)

/**
 * The MiniCPM call block as EBNF: CALL_START, ```python, one or more calls name(k=v, ...) with every required
 * parameter (in the schema's order) and any optional ones, each value a JSON literal of its schema (the Python
 * call parser takes JSON spellings), then ``` and CALL_END.
 */
export async function toolCallEbnf(tools: Array<{ name: string; parameters?: Record<string, unknown> }>): Promise<string> {
  const rules: string[] = []
  const calls: string[] = []
  for (const [ti, tool] of tools.entries()) {
    const params = (tool.parameters ?? {}) as { properties?: Record<string, unknown>; required?: string[] }
    const props = Object.entries(params.properties ?? {})
    const required = new Set(params.required ?? [])
    const p = `t${ti}_`
    for (const [pi, [name, schema]] of props.entries()) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        throw new UnsupportedSchemaError(`tool '${tool.name}': parameter '${name}' is not an identifier, so it cannot be a keyword argument`, 'properties')
      }
      rules.push(await valueRules(schema, `${p}v${pi}_`))
    }
    // start_i: nothing written yet; more_i: something written (the next argument needs ', ').
    const n = props.length
    for (let i = n; i >= 0; i--) {
      if (i === n) {
        rules.push(`${p}start${i} ::= ""`, `${p}more${i} ::= ""`)
        continue
      }
      const [name] = props[i]!
      const arg = `${lit(name + '=')} ${p}v${i}_root`
      const req = required.has(name)
      rules.push(`${p}start${i} ::= ${arg} ${p}more${i + 1}${req ? '' : ` | ${p}start${i + 1}`}`)
      rules.push(`${p}more${i} ::= ${lit(', ')} ${arg} ${p}more${i + 1}${req ? '' : ` | ${p}more${i + 1}`}`)
    }
    rules.push(`${p}call ::= ${lit(tool.name + '(')} ${p}start0 ${lit(')')}`)
    calls.push(`${p}call`)
  }
  return [
    `root ::= ${lit(CALL_START + '\n```python\n')} call (${lit('\n')} call)* ${lit('\n```\n' + CALL_END)}`,
    `call ::= ${calls.join(' | ')}`,
    ...rules,
  ].join('\n')
}

const services = new WeakMap<Tokenizer, GrammarService>()

/** The grammar service of a tokenizer (vocabulary set up on first use). */
export function grammarService(tok: Tokenizer, nVocab: number): GrammarService {
  let s = services.get(tok)
  if (!s || s.nVocab !== nVocab) {
    s = new GrammarService(tok, nVocab)
    services.set(tok, s)
  }
  return s
}
