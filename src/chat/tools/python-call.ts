/**
 * Parses the Python call syntax MiniCPM emits inside a tool-call block: one or more `name(key=value, ...)`
 * calls separated by whitespace/newlines, values being Python literals (strings in any quote style including
 * triple-quoted, escapes, ints, floats, True/False/None, lists, tuples, dicts, nested) or the JSON spellings
 * (true/false/null). Anything else (positional arguments, expressions, names) is a parse failure: the caller
 * keeps the block as text.
 */
import type { ToolCall } from './types'

export class PythonCallSyntaxError extends Error {}

class Reader {
  i = 0
  constructor(readonly s: string) {}
  fail(what: string): never {
    throw new PythonCallSyntaxError(`${what} at offset ${this.i}`)
  }
  ws(): void {
    while (this.i < this.s.length) {
      const c = this.s[this.i]!
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r') this.i++
      else if (c === '#') while (this.i < this.s.length && this.s[this.i] !== '\n') this.i++
      else break
    }
  }
  eat(c: string): boolean {
    this.ws()
    if (this.s.startsWith(c, this.i)) {
      this.i += c.length
      return true
    }
    return false
  }
  expect(c: string): void {
    if (!this.eat(c)) this.fail(`expected '${c}'`)
  }
  ident(): string {
    this.ws()
    const m = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*/.exec(this.s.slice(this.i))
    if (!m) this.fail('expected a name')
    this.i += m[0].length
    return m[0]
  }
}

const ESCAPES: Record<string, string> = { n: '\n', t: '\t', r: '\r', b: '\b', f: '\f', v: '\v', a: '\x07', '0': '\0' }

function parseString(r: Reader): string {
  r.ws()
  let raw = false
  const prefix = /^[rRbBuU]{0,2}(?=['"])/.exec(r.s.slice(r.i))
  if (prefix) {
    raw = /[rR]/.test(prefix[0])
    r.i += prefix[0].length
  }
  const q = r.s[r.i]!
  const triple = r.s.startsWith(q.repeat(3), r.i)
  const close = triple ? q.repeat(3) : q
  r.i += close.length
  let out = ''
  for (;;) {
    if (r.i >= r.s.length) r.fail('unterminated string')
    if (r.s.startsWith(close, r.i)) {
      r.i += close.length
      return out
    }
    const c = r.s[r.i]!
    if (!triple && c === '\n') r.fail('newline in a string')
    if (c === '\\' && !raw) {
      const n = r.s[r.i + 1]
      if (n === undefined) r.fail('unterminated escape')
      if (n === 'x' || n === 'u' || n === 'U') {
        const len = n === 'x' ? 2 : n === 'u' ? 4 : 8
        const hex = r.s.slice(r.i + 2, r.i + 2 + len)
        if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) r.fail('bad escape')
        out += String.fromCodePoint(parseInt(hex, 16))
        r.i += 2 + len
      } else if (n === '\n') {
        r.i += 2 // line continuation
      } else {
        out += ESCAPES[n] ?? (n === '\\' || n === "'" || n === '"' ? n : '\\' + n)
        r.i += 2
      }
      continue
    }
    out += c
    r.i++
  }
}

function parseValue(r: Reader, depth = 0): unknown {
  if (depth > 64) r.fail('nesting too deep')
  r.ws()
  const c = r.s[r.i]
  if (c === undefined) r.fail('expected a value')
  if (c === '"' || c === "'" || (/[rRbBuU]/.test(c) && /^[rRbBuU]{1,2}['"]/.test(r.s.slice(r.i)))) {
    let s = parseString(r)
    // Adjacent literals concatenate, as in Python.
    for (;;) {
      r.ws()
      const n = r.s[r.i]
      if (n !== '"' && n !== "'") break
      s += parseString(r)
    }
    return s
  }
  if (c === '[' || c === '(') {
    const close = c === '[' ? ']' : ')'
    r.i++
    const out: unknown[] = []
    while (!r.eat(close)) {
      out.push(parseValue(r, depth + 1))
      if (!r.eat(',')) {
        r.expect(close)
        break
      }
    }
    return out
  }
  if (c === '{') {
    r.i++
    const out: Record<string, unknown> = {}
    while (!r.eat('}')) {
      const k = parseValue(r, depth + 1)
      if (typeof k !== 'string' && typeof k !== 'number' && typeof k !== 'boolean' && k !== null) r.fail('bad dict key')
      r.expect(':')
      out[String(k)] = parseValue(r, depth + 1)
      if (!r.eat(',')) {
        r.expect('}')
        break
      }
    }
    return out
  }
  const num = /^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)/.exec(r.s.slice(r.i))
  if (num) {
    r.i += num[0].length
    const v = Number(num[0].replace(/_/g, ''))
    if (!Number.isFinite(v)) r.fail('bad number')
    return v
  }
  const word = /^[A-Za-z_]+/.exec(r.s.slice(r.i))?.[0]
  const literals: Record<string, unknown> = { True: true, False: false, None: null, true: true, false: false, null: null }
  if (word !== undefined && word in literals) {
    r.i += word.length
    return literals[word]
  }
  return r.fail('expected a literal value')
}

/** Every call in a block, or a PythonCallSyntaxError. An empty block is an error too. */
export function parsePythonCalls(block: string): ToolCall[] {
  const r = new Reader(block)
  const calls: ToolCall[] = []
  for (;;) {
    r.ws()
    if (r.i >= r.s.length) break
    const name = r.ident()
    r.expect('(')
    const args: Record<string, unknown> = {}
    while (!r.eat(')')) {
      const key = r.ident()
      if (!r.eat('=')) r.fail(`positional argument '${key}' (keyword arguments only)`)
      if (key in args) r.fail(`argument '${key}' repeated`)
      args[key] = parseValue(r)
      if (!r.eat(',')) {
        r.expect(')')
        break
      }
    }
    calls.push({ name, arguments: args })
    r.eat(';')
  }
  if (calls.length === 0) throw new PythonCallSyntaxError('no call in the block')
  return calls
}

/** A value as a Python literal (what the format renders for arguments sent back in the history). */
export function pythonLiteral(v: unknown): string {
  if (v === null || v === undefined) return 'None'
  if (v === true) return 'True'
  if (v === false) return 'False'
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : 'None'
  if (typeof v === 'string') return JSON.stringify(v)
  if (Array.isArray(v)) return `[${v.map(pythonLiteral).join(', ')}]`
  if (typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${JSON.stringify(k)}: ${pythonLiteral(x)}`)
      .join(', ')}}`
  }
  return JSON.stringify(String(v))
}
