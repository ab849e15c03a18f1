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
import { checkSchema, UnsupportedSchemaError } from './schema-check'

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

/** Figures for the closing measurements: mask computations and their time. */
export const grammarStats = { masks: 0, maskUs: 0, maxMaskUs: 0, compiles: 0, compileMs: 0, cacheHits: 0 }

const CACHE_MAX = 64

export class GrammarService {
  #compiler: Promise<GrammarCompiler>
  #cache = new Map<string, Promise<CompiledGrammar>>()
  readonly setupMs: Promise<number>

  constructor(
    tok: Tokenizer,
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

  /** The compiled grammar of a response format (cached by schema text); throws UnsupportedSchemaError. */
  compile(fmt: ResponseFormat): Promise<CompiledGrammar> {
    const key = fmt.type === 'json_object' ? 'json_object' : fmt.type === 'tool_call' ? `tools:${JSON.stringify(fmt.tools)}` : JSON.stringify(fmt.schema)
    const hit = this.#cache.get(key)
    if (hit) {
      grammarStats.cacheHits++
      this.#cache.delete(key) // LRU: move to the back
      this.#cache.set(key, hit)
      return hit
    }
    if (fmt.type === 'json_schema') checkSchema(fmt.schema)
    if (fmt.type === 'tool_call') for (const t of fmt.tools) checkSchema(t.parameters ?? { type: 'object' }, `#/tools/${t.name}`)
    const t0 = performance.now()
    const p = this.#compiler.then(async (c) => {
      try {
        // Compact output (no free whitespace): a weak or random model cannot wander into endless spaces.
        const g =
          fmt.type === 'json_object'
            ? await c.compileJSONSchema('{"type":"object"}', false, -1, [',', ':'], false)
            : fmt.type === 'tool_call'
              ? await c.compileGrammar(await toolCallEbnf(fmt.tools))
              : // XGrammar's strict mode for both OpenAI modes: properties and items the schema does not name are
              // not generated (they are allowed, never required, so the output validates either way), which keeps
              // a weak model from wandering into endless free-form keys.
              await c.compileJSONSchema(JSON.stringify(fmt.schema), false, -1, [',', ':'], true)
        grammarStats.compiles++
        grammarStats.compileMs += performance.now() - t0
        return g
      } catch (e) {
        throw new UnsupportedSchemaError(`the JSON schema could not be compiled: ${(e as Error).message ?? e}`, 'schema')
      }
    })
    p.catch(() => this.#cache.delete(key))
    this.#cache.set(key, p)
    if (this.#cache.size > CACHE_MAX) {
      const [oldest, old] = this.#cache.entries().next().value!
      this.#cache.delete(oldest)
      old.then((g) => g.dispose(), () => {})
    }
    return p
  }

  /** A matcher for one request; stopIds end the document (the engine stops on them too). */
  async matcher(fmt: ResponseFormat, stopIds: number[]): Promise<ConstrainedDecoder> {
    const g = await this.compile(fmt)
    const m = await GrammarMatcher.createGrammarMatcher(g, stopIds.length > 0 ? stopIds : undefined)
    return new ConstrainedDecoder(m, this.nVocab)
  }
}

/** One request's grammar state: accept each sampled token, then give the next mask. */
export class ConstrainedDecoder {
  constructor(
    private readonly m: GrammarMatcher,
    private readonly nVocab: number,
  ) {}

  /** False when the token breaks the grammar (cannot happen when the engine applied the mask). */
  accept(token: number): boolean {
    return this.m.acceptToken(token)
  }

  get terminated(): boolean {
    return this.m.isTerminated()
  }

  async nextMask(): Promise<Uint32Array> {
    const t0 = performance.now()
    const bits = await this.m.getNextTokenBitmask()
    const us = (performance.now() - t0) * 1000
    grammarStats.masks++
    grammarStats.maskUs += us
    if (us > grammarStats.maxMaskUs) grammarStats.maxMaskUs = us
    const words = (this.nVocab + 31) >> 5
    return new Uint32Array(bits.buffer, bits.byteOffset, words)
  }

  dispose(): void {
    this.m.dispose()
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
