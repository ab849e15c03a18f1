/**
 * Consuming a generate() stream in the CLI: write text as it comes, return the finish event.
 */
import type { GenerateEvent } from '../types'

type Finish = Extract<GenerateEvent, { type: 'finish' }>

export async function streamTo(events: AsyncIterable<GenerateEvent>, write: (text: string) => void): Promise<Finish> {
  for await (const ev of events) {
    if (ev.type === 'delta' && ev.text.length > 0) write(ev.text)
    if (ev.type === 'finish') {
      if (ev.reason === 'error') process.stderr.write(`generation failed: ${ev.error ?? 'engine error'}\n`)
      return ev
    }
  }
  throw new Error('the generation stream ended without a finish event')
}

export function printFinish(ev: Finish): void {
  const t = ev.timings
  process.stderr.write(
    `[${ev.reason}] ${ev.usage.promptTokens} prompt + ${ev.usage.completionTokens} generated tokens; ` +
      `queue ${t.queueMs.toFixed(1)} ms, prefill ${t.prefillMs.toFixed(1)} ms, ` +
      `${t.perTokenMs.toFixed(2)} ms/token` +
      (t.meanAcceptLength ? `; speculative: ${t.specVerifies} verifies, mean accept length ${t.meanAcceptLength.toFixed(2)}` : '') +
      '\n',
  )
}
