/**
 * MiniCPM's function-call format (MiniCPM3, MiniCPM4-MCP): tools are rendered into the system turn as Python
 * stubs under "# Functions" followed by the call rules; the model answers
 *
 *   <|thought_start|>\n{thought}\n<|thought_end|>\n<|tool_call_start|>\n```python\nf(k=v, ...)\n```\n<|tool_call_end|>\n{text}
 *
 * with plain-text markers (not special tokens). Tool results come back as `<|im_start|>tool` turns.
 */
import { parsePythonCalls, pythonLiteral } from './python-call'
import {
  ToolFormatError,
  type JsonSchema,
  type ToolCall,
  type ToolFormat,
  type ToolMessage,
  type ToolOutputPart,
  type ToolSpec,
  type ToolStreamParser,
} from './types'

export const THOUGHT_START = '<|thought_start|>'
export const THOUGHT_END = '<|thought_end|>'
export const CALL_START = '<|tool_call_start|>'
export const CALL_END = '<|tool_call_end|>'

const HEADER = 'from enum import Enum\nfrom typing import List, Dict, Optional\nfrom pydantic import BaseModel, Field\n\n'

const RULES =
  '# Function Call Rule and Output Format\n' +
  "- If the user's question can be answered without calling any function, please answer the user's question " +
  "directly. In this situation, you should return your thought and answer the user's question directly.\n" +
  '- If the user cannot be answered without calling any function, and the user does not provide enough ' +
  'information to call functions, please ask the user for more information. In this situation, you should ' +
  'return your thought and ask the user for more information.\n' +
  "- If the user's question cannot be answered without calling any function, and the user has provided enough " +
  'information to call functions to solve it, you should call the functions. In this situation, the assistant ' +
  'should return your thought and call the functions.\n' +
  '- Use default parameters unless the user has specified otherwise.\n' +
  '- You should answer in the following format:\n\n' +
  `${THOUGHT_START}\n{explain why the user's question can be answered without calling a function or why you ` +
  'should ask the user for more information or why you should call one or more functions and your plan to ' +
  `solve the user's question.}\n${THOUGHT_END}\n${CALL_START}\n\`\`\`python\n` +
  'func1(params_name=params_value, params_name2=params_value2...)\nfunc2(params)\n```\n' +
  `${CALL_END}\n{answer the user's question directly or ask the user for more information}`

const PY_TYPES: Record<string, string> = { string: 'str', number: 'float', integer: 'int', boolean: 'bool', null: 'None' }

/** The Python type hint of a JSON schema (enums and objects with properties become named classes). */
function pyType(name: string, s: JsonSchema | undefined): string {
  if (!s || typeof s !== 'object') return 'Any'
  if (Array.isArray(s.enum)) return title(name)
  const t = s.type
  if (typeof t === 'string' && t in PY_TYPES) return PY_TYPES[t]!
  if (t === 'array') return `List[${pyType(name, s.items as JsonSchema | undefined)}]`
  if (t === 'object') return s.properties ? title(name) : 'Dict[str, Any]'
  if (Array.isArray(t)) return `Union[${t.map((x) => pyType(name, { type: x })).join(', ')}]`
  return 'Any'
}

const title = (s: string) => s.replace(/(^|_)([a-z])/g, (_m, p: string, c: string) => p + c.toUpperCase())

/** Classes for enum and object properties (nested first), then the field lines of `s`. */
function fields(s: JsonSchema, indent: string, classes: string[]): string {
  const props = (s.properties ?? {}) as Record<string, JsonSchema>
  const required = new Set(Array.isArray(s.required) ? (s.required as string[]) : [])
  let out = ''
  for (const [name, p] of Object.entries(props)) {
    if (Array.isArray(p.enum)) {
      classes.push(
        `\n\nclass ${title(name)}(Enum):\n` + p.enum.map((v, i) => `    enum_${i} = ${JSON.stringify(v)}\n`).join(''),
      )
    } else if (p.type === 'object' && p.properties) {
      classes.push(`\n\nclass ${title(name)}(BaseModel):\n` + fields(p, '    ', classes))
    } else if (p.type === 'array' && (p.items as JsonSchema | undefined)?.properties) {
      classes.push(`\n\nclass ${title(name)}(BaseModel):\n` + fields(p.items as JsonSchema, '    ', classes))
    }
    const type = required.has(name) ? pyType(name, p) : `Optional[${pyType(name, p)}]`
    const dflt = 'default' in p ? pythonLiteral(p.default) : 'None'
    let line = `${indent}${name}: ${type}`
    if (p.description || p.title || p.pattern) {
      line += required.has(name) ? ' = Field(...' : ` = Field(${dflt}`
      if (p.description) line += `, description=${JSON.stringify(p.description)}`
      if (p.pattern) line += `, regex=${JSON.stringify(p.pattern)}`
      if (p.title) line += `, title=${JSON.stringify(p.title)}`
      line += ')'
    } else if (!required.has(name)) line += ` = ${dflt}`
    out += line + '\n'
  }
  return out
}

function stub(tool: ToolSpec): string {
  const params = tool.parameters ?? { type: 'object', properties: {} }
  const props = (params.properties ?? {}) as Record<string, JsonSchema>
  const required = new Set(Array.isArray(params.required) ? (params.required as string[]) : [])
  const sig = Object.entries(props)
    .map(([n, p]) => (required.has(n) ? n : `${n}=${'default' in p ? pythonLiteral(p.default) : 'None'}`))
    .join(', ')
  const classes: string[] = []
  const body = fields(params, '        ', classes)
  return (
    classes.join('') +
    `\n\ndef ${tool.name}(${sig}):\n    """${tool.description ?? ''}` +
    (Object.keys(props).length > 0 ? `\n\n    Args:\n${body}` : '\n') +
    '    """\n'
  )
}

/** Tool names must be Python identifiers: the model calls them as functions. */
export function checkToolName(name: string, param: string): void {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    throw new ToolFormatError(
      `tool name '${name}' cannot be used with the MiniCPM tool format: it must be a Python identifier ` +
        '(letters, digits and _, not starting with a digit)',
      param,
    )
  }
}

function renderCall(c: ToolCall): string {
  const args = Object.entries(c.arguments).map(([k, v]) => `${k}=${pythonLiteral(v)}`)
  return `${c.name}(${args.join(', ')})`
}

function render(messages: ToolMessage[], tools: ToolSpec[], opts: { addGenerationPrompt: boolean }): string {
  tools.forEach((t, i) => checkToolName(t.name, `tools.${i}.function.name`))
  let rest = messages
  let system = ''
  if (messages[0]?.role === 'system') {
    system = messages[0].content
    rest = messages.slice(1)
  }
  let out = ''
  if (system || tools.length > 0) {
    out += '<|im_start|>system\n' + system
    if (tools.length > 0) {
      out += '\n# Functions\nHere is a list of functions that you can invoke:\n```python\n' + HEADER
      out += tools.map(stub).join('') + '\n```\n\n' + RULES
    }
    out += '<|im_end|>\n'
  }
  for (const m of rest) {
    out += `<|im_start|>${m.role}\n`
    if (m.role === 'assistant' && m.reasoning) out += `${THOUGHT_START}\n${m.reasoning}\n${THOUGHT_END}\n`
    if (m.role === 'assistant' && m.toolCalls && m.toolCalls.length > 0) {
      out += `${CALL_START}\n\`\`\`python\n${m.toolCalls.map((c) => renderCall(c) + '\n').join('')}\`\`\`\n${CALL_END}\n`
    }
    out += m.content + '<|im_end|>\n'
  }
  if (opts.addGenerationPrompt) out += '<|im_start|>assistant\n'
  return out
}

/** The calls of a block (```python fences optional), or null when it does not parse. */
export function parseCallBlock(block: string): ToolCall[] | null {
  const fenced = /^\s*```[A-Za-z]*\n?([\s\S]*?)```\s*$/.exec(block)
  try {
    return parsePythonCalls(fenced ? fenced[1]! : block)
  } catch {
    return null
  }
}

type State = 'text' | 'thought' | 'call'

/**
 * What to hold back at the end of s: a partial marker, plus the newline before it (a newline right before a
 * marker belongs to the format, so it must not be emitted until what follows it is known).
 */
function held(s: string, markers: string[]): number {
  const keep = heldSuffix(s, markers)
  return s[s.length - keep - 1] === '\n' ? keep + 1 : keep
}

/** Longest suffix of s that is a proper prefix of one of the markers (held back until the next text). */
function heldSuffix(s: string, markers: string[]): number {
  let best = 0
  for (const m of markers) {
    for (let n = Math.min(m.length - 1, s.length); n > best; n--) {
      if (s.endsWith(m.slice(0, n))) {
        best = n
        break
      }
    }
  }
  return best
}

class MiniCpmParser implements ToolStreamParser {
  private state: State = 'text'
  private buf = ''
  private stripNewline = false // the newline after a closing marker belongs to the format

  push(text: string): ToolOutputPart[] {
    this.buf += text
    return this.drain(false)
  }

  end(): ToolOutputPart[] {
    return this.drain(true)
  }

  private emit(out: ToolOutputPart[], type: 'content' | 'reasoning', text: string): void {
    if (this.stripNewline && text.length > 0) {
      if (text.startsWith('\n')) text = text.slice(1)
      this.stripNewline = false
    }
    if (text.length === 0) return
    const last = out[out.length - 1]
    if (last && last.type === type) last.text += text
    else out.push({ type, text })
  }

  private drain(final: boolean): ToolOutputPart[] {
    const out: ToolOutputPart[] = []
    for (;;) {
      if (this.state === 'text') {
        const t = this.buf.indexOf(THOUGHT_START)
        const c = this.buf.indexOf(CALL_START)
        const at = t < 0 ? c : c < 0 ? t : Math.min(t, c)
        if (at >= 0) {
          this.emit(out, 'content', this.buf.slice(0, at).replace(/\n$/, ''))
          const marker = at === c ? CALL_START : THOUGHT_START
          this.state = at === c ? 'call' : 'thought'
          this.buf = this.buf.slice(at + marker.length)
          this.stripNewline = true
          continue
        }
        const keep = final ? 0 : held(this.buf, [THOUGHT_START, CALL_START])
        this.emit(out, 'content', this.buf.slice(0, this.buf.length - keep))
        this.buf = this.buf.slice(this.buf.length - keep)
        return out
      }
      if (this.state === 'thought') {
        const e = this.buf.indexOf(THOUGHT_END)
        if (e >= 0) {
          this.emit(out, 'reasoning', this.buf.slice(0, e).replace(/\n$/, ''))
          this.buf = this.buf.slice(e + THOUGHT_END.length)
          this.state = 'text'
          this.stripNewline = true
          continue
        }
        // Reasoning streams as it comes.
        const keep = final ? 0 : held(this.buf, [THOUGHT_END])
        this.emit(out, 'reasoning', this.buf.slice(0, this.buf.length - keep))
        this.buf = this.buf.slice(this.buf.length - keep)
        return out
      }
      // A call block is held whole: its calls come out once it is closed (or the output ends).
      const e = this.buf.indexOf(CALL_END)
      if (e < 0 && !final) return out
      const block = e >= 0 ? this.buf.slice(0, e) : this.buf
      const calls = parseCallBlock(block)
      this.stripNewline = false
      if (calls) for (const call of calls) out.push({ type: 'call', call })
      else this.emit(out, 'content', CALL_START + block + (e >= 0 ? CALL_END : ''))
      this.buf = e >= 0 ? this.buf.slice(e + CALL_END.length) : ''
      this.state = 'text'
      this.stripNewline = calls !== null
      if (e < 0) return out
    }
  }
}

export const minicpmToolFormat: ToolFormat = {
  name: 'minicpm',
  validate: (tools) => tools.forEach((t, i) => checkToolName(t.name, `tools.${i}.function.name`)),
  render,
  parser: () => new MiniCpmParser(),
}
