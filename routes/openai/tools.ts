/**
 * @module
 * OpenAI tools on /v1/chat/completions, over the model's tool format (src/chat/tools): request checks
 * (tools, tool_choice, tool and tool-call messages) and the output side, where generated text is split into
 * content, reasoning_content and tool_calls, streaming (whole calls, one per delta entry) or not.
 */

import {
  ToolFormatError,
  type ToolCall,
  type ToolFormat,
  type ToolSpec,
  type ToolStreamParser,
} from '../../src/chat/tools/index.ts'
import { badRequest, unsupported } from '../errors.ts'

type Choice = unknown

/** What the request asks of tools: the specs to render and whether output is parsed for calls. */
export interface ToolPlan {
  tools: ToolSpec[]
  parse: boolean
  /** tool_choice 'required' or a named function: the tools the constrained decoder lets the call name */
  force?: ToolSpec[]
}

/** Validates tools + tool_choice against the model's format; throws 400s that name the field. */
export function planTools(tools: unknown[] | null | undefined, choice: Choice, format: ToolFormat | null): ToolPlan {
  const specs = (tools ?? []).map((t, i) => toolSpec(t, i))
  if (choice !== undefined && choice !== null && choice !== 'none' && choice !== 'auto') {
    const named = typeof choice === 'object' && (choice as { function?: { name?: unknown } }).function?.name
    if (choice !== 'required' && typeof named !== 'string') {
      throw badRequest("tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}", 'tool_choice')
    }
    if (typeof named === 'string' && !specs.some((s) => s.name === named)) {
      throw badRequest(`tool_choice names '${named}', which is not among the tools`, 'tool_choice')
    }
    if (specs.length === 0) throw badRequest("tool_choice 'required' needs tools", 'tool_choice')
    if (format?.name !== 'minicpm') {
      throw unsupported(
        'tool_choice',
        `tool_choice ${typeof named === 'string' ? `{function: ${named}}` : "'required'"} forces a call, which ` +
          `the constrained decoder can do in the minicpm tool format only (this model's: ${format?.name ?? 'none'}). ` +
          "Use tool_choice 'auto' (the model decides) instead",
      )
    }
    try {
      format.validate(specs)
    } catch (e) {
      if (e instanceof ToolFormatError) throw badRequest(e.message, e.param)
      throw e
    }
    return { tools: specs, parse: true, force: typeof named === 'string' ? specs.filter((s) => s.name === named) : specs }
  }
  if (specs.length > 0 && format) {
    try {
      format.validate(specs)
    } catch (e) {
      if (e instanceof ToolFormatError) throw badRequest(e.message, e.param)
      throw e
    }
  }
  if (specs.length > 0 && !format) {
    throw unsupported(
      'tools',
      'this model has no tool format (its chat template cannot take tools); serve it with --tool-format minicpm ' +
        'if it was trained on MiniCPM function calls',
    )
  }
  const parse = specs.length > 0 && choice !== 'none'
  return { tools: parse ? specs : [], parse }
}

function toolSpec(t: unknown, i: number): ToolSpec {
  const param = `tools.${i}`
  if (t === null || typeof t !== 'object') throw badRequest(`tools[${i}] must be an object`, param)
  const o = t as { type?: unknown; function?: unknown }
  if (o.type !== 'function') throw unsupported(`${param}.type`, `tools[${i}].type must be 'function'`)
  const f = o.function as { name?: unknown; description?: unknown; parameters?: unknown } | undefined
  if (!f || typeof f.name !== 'string' || f.name === '') {
    throw badRequest(`tools[${i}].function.name is required`, `${param}.function.name`)
  }
  if (f.description != null && typeof f.description !== 'string') {
    throw badRequest(`tools[${i}].function.description must be a string`, `${param}.function.description`)
  }
  if (f.parameters != null && (typeof f.parameters !== 'object' || Array.isArray(f.parameters))) {
    throw badRequest(`tools[${i}].function.parameters must be a JSON Schema object`, `${param}.function.parameters`)
  }
  return {
    name: f.name,
    ...(typeof f.description === 'string' ? { description: f.description } : {}),
    ...(f.parameters ? { parameters: f.parameters as Record<string, unknown> } : {}),
  }
}

/** An assistant message's tool_calls (arguments are JSON strings in OpenAI's shape). */
export function toolCallsOf(calls: unknown, i: number): ToolCall[] {
  if (!Array.isArray(calls)) throw badRequest(`messages[${i}].tool_calls must be an array`, `messages.${i}.tool_calls`)
  return calls.map((c, j) => {
    const param = `messages.${i}.tool_calls.${j}`
    const f = (c as { function?: { name?: unknown; arguments?: unknown } } | null)?.function
    if (!f || typeof f.name !== 'string') throw badRequest(`messages[${i}].tool_calls[${j}].function.name is required`, param)
    let args: unknown = {}
    if (typeof f.arguments === 'string' && f.arguments.trim() !== '') {
      try {
        args = JSON.parse(f.arguments)
      } catch {
        throw badRequest(`messages[${i}].tool_calls[${j}].function.arguments is not valid JSON`, `${param}.function.arguments`)
      }
    } else if (f.arguments != null && typeof f.arguments === 'object') args = f.arguments
    if (args === null || typeof args !== 'object' || Array.isArray(args)) {
      throw badRequest(`messages[${i}].tool_calls[${j}].function.arguments must be a JSON object`, `${param}.function.arguments`)
    }
    return { name: f.name, arguments: args as Record<string, unknown> }
  })
}

export interface OpenAiToolCall {
  index: number
  id: string
  type: 'function'
  function: { name: string; arguments: string }
}

const callId = () => `call_${crypto.randomUUID().replace(/-/g, '').slice(0, 24)}`

/** The output side: text in, OpenAI pieces out. */
export class ToolOutput {
  private readonly parser: ToolStreamParser
  private nCalls = 0

  constructor(format: ToolFormat) {
    this.parser = format.parser()
  }

  get called(): boolean {
    return this.nCalls > 0
  }

  push(text: string) {
    return this.shape(this.parser.push(text))
  }

  end() {
    return this.shape(this.parser.end())
  }

  private shape(parts: ReturnType<ToolStreamParser['push']>) {
    let content = ''
    let reasoning = ''
    const calls: OpenAiToolCall[] = []
    for (const p of parts) {
      if (p.type === 'content') content += p.text
      else if (p.type === 'reasoning') reasoning += p.text
      else {
        calls.push({
          index: this.nCalls++,
          id: callId(),
          type: 'function',
          function: { name: p.call.name, arguments: JSON.stringify(p.call.arguments) },
        })
      }
    }
    return { content, reasoning, calls }
  }
}
