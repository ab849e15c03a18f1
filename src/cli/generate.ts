/**
 * `generate`: one prompt (or a messages JSON file) -> streamed text on stdout.
 */
import { readFileSync } from 'node:fs'
import { loadModel } from '../runtime/load'
import type { ChatMessage, GenerateRequest } from '../types'
import {
  kvSummary,
  loadOptionsOf,
  modelHelp,
  modelOptions,
  parse,
  samplingHelp,
  samplingOf,
  samplingOptions,
  UsageError,
  type Command,
} from './common'
import { printFinish, streamTo } from './stream'

const options = {
  ...modelOptions,
  ...samplingOptions,
  prompt: { type: 'string', short: 'p' },
  messages: { type: 'string' },
  raw: { type: 'boolean' },
  verbose: { type: 'boolean', short: 'v' },
} as const

export const generateCommand: Command = {
  name: 'generate',
  summary: 'generate text from a prompt or a chat, streamed to stdout',
  usage: `Usage: minicpm-edge generate (--prompt TEXT | --messages FILE | TEXT) [flags]

Input:
  -p, --prompt TEXT        the prompt; with --raw it is sent as is, else as one user message of a chat
      --messages FILE      a JSON array of {role, content} messages ('-' reads stdin)
      --raw                no chat template: the prompt text (plus BOS) goes straight to the model
  -v, --verbose            print the KV cache type and size and the kernels, and at the end token counts and
                           timings, on stderr

${modelHelp}

${samplingHelp}`,

  async run(argv) {
    const { values, positionals } = parse(argv, options, true)
    const request: GenerateRequest = { ...samplingOf(values), ...inputOf(values, positionals) }
    const model = await loadModel(values.model, loadOptionsOf(values))
    if (values.verbose) process.stderr.write(`${kvSummary(model)}\nkernels ${model.stats().backendName}\n`)
    try {
      const ac = new AbortController()
      process.once('SIGINT', () => ac.abort())
      const finish = await streamTo(model.generate({ ...request, signal: ac.signal }), (text) =>
        process.stdout.write(text),
      )
      process.stdout.write('\n')
      if (values.verbose) printFinish(finish)
      // 130: stopped by Ctrl-C, as shells report an interrupted command.
      return finish.reason === 'error' ? 1 : finish.reason === 'cancelled' ? 130 : 0
    } finally {
      model.dispose()
    }
  },
}

function inputOf(values: Record<string, unknown>, positionals: string[]): GenerateRequest {
  const prompt = (values.prompt as string | undefined) ?? (positionals.length > 0 ? positionals.join(' ') : undefined)
  const file = values.messages as string | undefined
  if (prompt !== undefined && file !== undefined) throw new UsageError('give either --prompt or --messages, not both')
  if (file !== undefined) return { messages: readMessages(file) }
  if (prompt === undefined) throw new UsageError('a prompt is required (--prompt TEXT, --messages FILE or TEXT)')
  return values.raw ? { prompt } : { messages: [{ role: 'user', content: prompt }] }
}

function readMessages(file: string): ChatMessage[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file === '-' ? 0 : file, 'utf8'))
  } catch (e) {
    throw new UsageError(`--messages ${file}: ${(e as Error).message}`)
  }
  const list = Array.isArray(parsed) ? parsed : (parsed as { messages?: unknown })?.messages
  if (!Array.isArray(list) || list.length === 0) {
    throw new UsageError(`--messages ${file}: expected a non-empty JSON array of {role, content}`)
  }
  return list as ChatMessage[]
}
