/**
 * Tool formats by name. A model's format comes from LoadOptions.toolFormat (`--tool-format`), else from its
 * chat template (a template that emits `<|tool_call_start|>` is MiniCPM's), else from its family: MiniCPM4
 * checkpoints default to MiniCPM's format (MiniCPM4-MCP's). 'none' turns tools off (requests with tools get 400).
 */
import { minicpmToolFormat } from './minicpm'
import type { ToolFormat, ToolOutputPart } from './types'

export * from './types'
export { minicpmToolFormat, parseCallBlock } from './minicpm'
export { parsePythonCalls, pythonLiteral, PythonCallSyntaxError } from './python-call'

export const TOOL_FORMATS: Record<string, ToolFormat> = { minicpm: minicpmToolFormat }

export function resolveToolFormat(opts: {
  configured?: string
  template?: string | null
  modelType?: string
}): ToolFormat | null {
  if (opts.configured !== undefined) {
    if (opts.configured === 'none') return null
    const f = TOOL_FORMATS[opts.configured]
    if (!f) throw new Error(`unknown tool format '${opts.configured}' (known: ${Object.keys(TOOL_FORMATS).join(', ')}, none)`)
    return f
  }
  if (opts.template?.includes('<|tool_call_start|>')) return minicpmToolFormat
  if (opts.modelType === undefined || /^minicpm/i.test(opts.modelType)) return minicpmToolFormat
  return null
}

/** The whole output at once: the same parser, so streaming and non-streaming agree by construction. */
export function parseToolOutput(format: ToolFormat, text: string): ToolOutputPart[] {
  const p = format.parser()
  return [...p.push(text), ...p.end()]
}
