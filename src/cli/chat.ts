/**
 * `chat`: multi-turn conversation. Each stdin line is a user turn; the reply streams to stdout. Works
 * interactively (prompt, Ctrl-C stops the reply) and with piped stdin (one reply per line, ends at EOF).
 */
import { createInterface } from 'node:readline'
import { loadModel } from '../runtime/load'
import type { ChatMessage } from '../types'
import {
  kvSummary,
  loadOptionsOf,
  modelHelp,
  modelOptions,
  parse,
  samplingHelp,
  samplingOf,
  samplingOptions,
  type Command,
} from './common'
import { printFinish, streamTo } from './stream'

const options = {
  ...modelOptions,
  ...samplingOptions,
  system: { type: 'string', short: 's' },
  verbose: { type: 'boolean', short: 'v' },
} as const

export const chat: Command = {
  name: 'chat',
  summary: 'interactive multi-turn chat (reads stdin lines; /reset, /exit)',
  usage: `Usage: minicpm-edge chat [flags]

Each line you type is a user message; the assistant's reply streams back. Commands: /reset forgets the
conversation, /exit (or end of input) quits. Ctrl-C stops a reply; a second Ctrl-C quits.

  -s, --system TEXT        system message
  -v, --verbose            print the KV cache type and size once, token counts and timings after each reply

${modelHelp}

${samplingHelp}`,

  async run(argv) {
    const { values } = parse(argv, options)
    const sampling = samplingOf(values)
    const model = await loadModel(values.model, loadOptionsOf(values))
    if (values.verbose) process.stderr.write(`${kvSummary(model)}\n`)
    const interactive = process.stdin.isTTY === true
    const system: ChatMessage[] = values.system ? [{ role: 'system', content: values.system }] : []
    let history: ChatMessage[] = [...system]
    let current: AbortController | null = null
    const rl = createInterface({
      input: process.stdin,
      output: interactive ? process.stdout : undefined,
      terminal: interactive,
    })
    rl.on('SIGINT', () => {
      if (current) current.abort()
      else rl.close()
    })
    try {
      if (interactive) rl.setPrompt('> ')
      if (interactive) rl.prompt()
      for await (const line of rl) {
        const text = line.trim()
        if (text === '/exit') break
        if (text === '/reset') {
          history = [...system]
        } else if (text.length > 0) {
          history.push({ role: 'user', content: text })
          current = new AbortController()
          let reply = ''
          const finish = await streamTo(
            model.generate({ ...sampling, messages: history, signal: current.signal }),
            (t) => {
              reply += t
              process.stdout.write(t)
            },
          )
          current = null
          process.stdout.write('\n')
          if (values.verbose) printFinish(finish)
          history.push({ role: 'assistant', content: reply })
        }
        if (interactive) rl.prompt()
      }
    } finally {
      rl.close()
      model.dispose()
    }
  },
}
