/**
 * The terminal status line (src/cli/term.ts) and progress bars: a bar at 100 % ends its line, a bar
 * replaced by the next phase ends its line, and a log line printed while a bar shows never lands inside it.
 */
import { expect, test } from 'bun:test'
import { progressBar } from '../src/cli/common'
import { StatusLine } from '../src/cli/term'


function capture() {
  let raw = ''
  const out = new StatusLine({ write: (t: string) => (raw += t) })
  return { out, raw: () => raw }
}

test('a bar at 100 % ends its line, even when 99.6 % already drew as the same text', () => {
  const { out, raw } = capture()
  const bar = progressBar(out, true)
  bar('weights', 0, 1000)
  bar('weights', 996, 1000)
  bar('weights', 1000, 1000)
  out.line('ready: next message')
  console.log(JSON.stringify(raw()))
  expect(raw()).toEndWith('100%\nready: next message\n')
  expect(raw()).toContain('99%')
})

test('the next phase ends an unfinished bar; one-step phases read "phase... done"', () => {
  const { out, raw } = capture()
  const bar = progressBar(out, true)
  bar('download', 10, 100)
  bar('weights', 0, 1)
  bar('weights', 1, 1)
  expect(raw()).toContain('10%\n')
  expect(raw()).toEndWith('\r\x1b[Kweights... done\n')
})

test('a log line while a bar shows goes above it and the bar is redrawn', () => {
  const { out, raw } = capture()
  const bar = progressBar(out, true)
  bar('pulling org/x', 50, 100, 'bytes')
  out.line('2026-01-01T00:00:00.000Z id GET /health 503 dur=0.2ms ttfb=0.2ms')
  const text = raw()
  console.log(JSON.stringify(text))
  const afterLog = text.slice(text.indexOf('GET /health'))
  expect(afterLog).toMatch(/^GET \/health 503 dur=0\.2ms ttfb=0\.2ms\npulling org\/x +\[#+-+\] 50% 50 B \/ 100 B/)
  // Not a TTY: silent.
  const quiet = capture()
  progressBar(quiet.out, false)('weights', 1, 2)
  expect(quiet.raw()).toBe('')
})
