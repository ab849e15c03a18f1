/**
 * The hostile-client / hostile-file attack matrix (issue #14): each `attack()` is one case of the matrix; the
 * suite prints `hostile matrix <file>: N cases, M passed` at the end so the next round starts from the counts.
 */
import { afterAll, test } from 'bun:test'

export function matrix(file: string) {
  let cases = 0
  let passed = 0
  afterAll(() => console.log(`hostile matrix ${file}: ${cases} cases, ${passed} passed`))
  return function attack(item: number, name: string, fn: () => Promise<void> | void, timeoutMs = 30_000) {
    cases++
    test(
      `#14.${item} ${name}`,
      async () => {
        await fn()
        passed++
      },
      timeoutMs,
    )
  }
}

/** A raw TCP client: writes `data`, resolves with ms until the server closed the socket (or null at `capMs`). */
export function heldSocket(port: number, data: string, capMs: number): Promise<{ closedMs: number | null; got: string }> {
  const { connect } = require('node:net') as typeof import('node:net')
  return new Promise((resolve) => {
    const t0 = performance.now()
    let got = ''
    const s = connect({ port, host: '127.0.0.1' }, () => s.write(data))
    s.on('data', (d: Buffer) => (got += d.toString()))
    s.on('error', () => {})
    const cap = setTimeout(() => {
      s.destroy()
      resolve({ closedMs: null, got })
    }, capMs)
    s.on('close', () => {
      clearTimeout(cap)
      resolve({ closedMs: Math.round(performance.now() - t0), got })
    })
  })
}
