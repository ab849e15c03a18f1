/**
 * Tool calling, format-neutral: what a model's tool format renders (the conversation with tools, tool calls
 * and tool results) and what it parses back out of generated text. One format per model family; routes only
 * see these types, so adding a format (e.g. MiniCPM4.1's XML-style calls) touches src/chat/tools/ alone.
 */

/** An OpenAI function tool: `{type: 'function', function: {name, description, parameters}}`. */
export interface ToolSpec {
  name: string
  description?: string
  parameters?: JsonSchema
}

export type JsonSchema = { [k: string]: unknown }

/** A tool call as a message carries it (arguments already parsed from their JSON string). */
export interface ToolCall {
  name: string
  arguments: Record<string, unknown>
}

/** A conversation turn as tool formats render it. */
export interface ToolMessage {
  role: 'system' | 'user' | 'assistant' | 'tool'
  content: string
  toolCalls?: ToolCall[] // assistant
  reasoning?: string // assistant: its thought, when the client sends it back
}

/** One piece of parsed output, in order: text, reasoning text, or a whole tool call. */
export type ToolOutputPart =
  | { type: 'content'; text: string }
  | { type: 'reasoning'; text: string }
  | { type: 'call'; call: ToolCall }

/** Incremental parser: push text as it streams, end() once; every part comes out exactly once. */
export interface ToolStreamParser {
  push(text: string): ToolOutputPart[]
  end(): ToolOutputPart[]
}

export interface ToolFormat {
  name: string
  /** Throws ToolFormatError for tools this format cannot express (e.g. a name the model could not call). */
  validate(tools: ToolSpec[]): void
  render(messages: ToolMessage[], tools: ToolSpec[], opts: { addGenerationPrompt: boolean }): string
  parser(): ToolStreamParser
}

/** A tool call's problem the caller should hear about as a 400 (bad tool name, bad schema). */
export class ToolFormatError extends Error {
  constructor(
    message: string,
    readonly param: string,
  ) {
    super(message)
  }
}
