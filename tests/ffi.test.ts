/**
 * The bun:ffi layer against the real library: handle lifetime, errors, and event delivery through both the
 * doorbell callback and the polling fallback (struct layouts: ffi-layout.test.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { NativeContext, NativeEngine, NativeError, NativeModel, nativeLibrary } from '../ffi/index'
import type { NativeEvent } from '../ffi/index'
import { cachedCheckpoint, SMALL } from './helpers/checkpoints'

const REPO = join(import.meta.dir, '..')
const BUN = process.execPath

let dir: string
let model: NativeModel

beforeAll(() => {
  dir = cachedCheckpoint('small', SMALL)
  model = NativeModel.load(dir)
})
afterAll(() => model.dispose())

/** Collects every event of the given requests through onReady + drain; resolves when all have finished. */
function collect(engine: NativeEngine, ids: number[]): Promise<Map<number, NativeEvent[]>> {
  const out = new Map<number, NativeEvent[]>(ids.map((id) => [id, []]))
  let open = ids.length
  return new Promise((resolve) => {
    for (const id of ids) {
      engine.onReady(id, () => {
        for (const ev of engine.drain(id)) {
          out.get(id)!.push(ev)
          if (ev.finish !== 'none' && --open === 0) resolve(out)
        }
      })
    }
  })
}

describe('library', () => {
  test('opens, reports its ABI version and system info', () => {
    console.log(`library ${nativeLibrary.path} abi ${nativeLibrary.abiVersion} cpu '${nativeLibrary.systemInfo()}'`)
    expect(nativeLibrary.abiVersion).toBe(3)
    const t0 = nativeLibrary.timeUs()
    expect(t0).toBeGreaterThan(0)
    expect(nativeLibrary.timeUs()).toBeGreaterThanOrEqual(t0)
  })

})

describe('handles', () => {
  test('model info is a camelCase copy of the native struct', () => {
    const info = model.info()
    console.log('model info', info)
    expect(info.nVocab).toBe(256)
    expect(info.nLayer).toBe(1)
    expect(info.nEmbd).toBe(64)
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { eos_token_id: number | number[] }
    expect(info.eosTokenIds).toEqual([config.eos_token_id].flat())
    expect(info.weightDtype).toBe('bf16')
    expect(info.tiedHead).toBe(true)
    expect(info.nParams).toBeGreaterThan(0)
    expect(info).toMatchObject({ backend: 'cpu', backendName: 'cpu', sparseConfig: false, quantizationConfig: false })
    expect(model.warnings()).toEqual([])
  })

  test('a failed load throws NativeError with the status name and the path', () => {
    const missing = join(dir, 'no-such-subdir')
    let err: unknown
    try {
      NativeModel.load(missing)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(NativeError)
    console.log(`load error: ${(err as NativeError).statusName}: ${(err as Error).message}`)
    expect((err as NativeError).statusName).toBe('io')
    expect((err as NativeError).status).toBe(-2)
    expect((err as Error).message).toContain(missing)
  })

  test('the backend option: cpu loads, cuda is unsupported in this build', () => {
    using cpu = NativeModel.load(dir, { backend: 'cpu' })
    expect(cpu.info().backend).toBe('cpu')
    let err: unknown
    try {
      NativeModel.load(dir, { backend: 'cuda' })
    } catch (e) {
      err = e
    }
    console.log(`cuda load: ${(err as Error).message}`)
    expect((err as NativeError).statusName).toBe('unsupported')
  })

  test('double dispose is safe and use after dispose throws, for every handle', () => {
    const m = NativeModel.load(dir)
    const ctx = new NativeContext(m)
    const engine = new NativeEngine(m)
    ctx.dispose()
    ctx.dispose()
    expect(() => ctx.eval([1])).toThrow('NativeContext is disposed')
    m.dispose() // disposes the engine (a child) before the model
    m.dispose()
    expect(engine.disposed).toBe(true)
    expect(() => engine.submit([1])).toThrow('NativeEngine is disposed')
    expect(() => m.info()).toThrow('NativeModel is disposed')
    expect(() => new NativeContext(m)).toThrow('NativeModel is disposed')
  })

  test('context eval, sequence length, truncate; a bad token leaves the sequence unchanged', () => {
    using ctx = new NativeContext(model, { nSeqMax: 2 })
    const rows = ctx.eval([1, 5, 9], { output: 'all' })
    expect(rows.length).toBe(3)
    expect(rows[0]!.length).toBe(256)
    expect(rows.every((r) => r.every(Number.isFinite))).toBe(true)
    expect(ctx.eval([7], { seqIds: [1] }).length).toBe(1)
    expect([ctx.seqLen(0), ctx.seqLen(1)]).toEqual([3, 1])
    let err: unknown
    try {
      ctx.eval([1, 100000])
    } catch (e) {
      err = e
    }
    console.log(`bad token: ${(err as Error).message}`)
    expect((err as NativeError).statusName).toBe('invalid_argument')
    expect(ctx.seqLen(0)).toBe(3)
    ctx.truncate(0, 1)
    expect(ctx.seqLen(0)).toBe(1)
  })
})

describe('engine events', () => {
  for (const poll of [false, true]) {
    test(`${poll ? 'polling' : 'doorbell'} path delivers every event of concurrent requests`, async () => {
      using engine = new NativeEngine(model, { poll, nCtx: 256 })
      expect(engine.polling).toBe(poll)
      const lengths = [5, 9, 13]
      const ids = lengths.map((n, i) =>
        engine.submit([1, 3 + i, 4], { maxTokens: n, ignoreEos: true, seed: i, logprobs: true, topLogprobs: 2 }),
      )
      const events = await collect(engine, ids)
      ids.forEach((id, i) => {
        const evs = events.get(id)!
        const tokens = evs.filter((e) => e.token >= 0)
        console.log(
          `request ${id}: ${tokens.length} tokens, finish ${evs.at(-1)!.finish}, first top ${JSON.stringify(evs[0]!.top)}`,
        )
        expect(tokens.length).toBe(lengths[i]!)
        expect(evs.at(-1)!.finish).toBe('length')
        expect(evs.slice(0, -1).every((e) => e.finish === 'none')).toBe(true)
        expect(tokens.every((e) => e.token < 256 && e.logprob <= 0 && e.top.length === 2)).toBe(true)
        // After the finish event the id is released.
        expect(engine.requestInfo(id)).toBeNull()
        expect(engine.cancel(id)).toBe(false)
      })
      const stats = engine.stats()
      expect(stats).toMatchObject({ backend: 'cpu', running: 0, waiting: 0, undrained: 0, kvTokensUsed: 0 })
      expect(stats.backendName).toStartWith('cpu')
      expect(stats.generatedTokens).toBe(5 + 9 + 13)
    })
  }

  test('cancel ends a request with a cancelled event', async () => {
    using engine = new NativeEngine(model)
    const id = engine.submit([1, 2, 3], { ignoreEos: true })
    expect(engine.requestInfo(id)!.nPrompt).toBe(3)
    expect(engine.cancel(id)).toBe(true)
    const evs = (await collect(engine, [id])).get(id)!
    expect(evs.at(-1)!.finish).toBe('cancelled')
    expect(engine.stats()).toMatchObject({ running: 0, undrained: 0 })
  })

  test('submit errors carry their status name', () => {
    using engine = new NativeEngine(model)
    const statusOf = (fn: () => unknown) => {
      try {
        fn()
      } catch (e) {
        console.log(`submit error: ${(e as Error).message}`)
        return (e as NativeError).statusName
      }
      return 'ok'
    }
    expect(statusOf(() => engine.submit([]))).toBe('invalid_argument')
    expect(statusOf(() => engine.submit([1, 256]))).toBe('invalid_argument')
    expect(statusOf(() => engine.submit([1], { topLogprobs: 21 }))).toBe('invalid_argument')
    // Not silently truncated to a valid id by the Int32Array copy:
    expect(statusOf(() => engine.submit([1, 2.5]))).toBe('invalid_argument')
    expect(statusOf(() => engine.submit([1], {}, { logitBias: { abc: 1 } as Record<number, number> }))).toBe(
      'invalid_argument',
    )
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 0 })
  })
})

describe('in a subprocess: environment switches and the GC backstop', () => {
  const script = `
    import { NativeModel, NativeEngine } from './ffi/index'
    const m = NativeModel.load(process.argv[1])
    const e = new NativeEngine(m)
    const id = e.submit([1, 2], { maxTokens: 4, ignoreEos: true })
    let n = 0
    await new Promise((done) => e.onReady(id, () => { for (const ev of e.drain(id)) { n++; if (ev.finish !== 'none') done() } }))
    console.log(JSON.stringify({ polling: e.polling, events: n }))
    m.dispose()`

  function run(env: Record<string, string>) {
    const p = Bun.spawnSync([BUN, '-e', script, dir], { cwd: REPO, env: { ...process.env, ...env } })
    const stdout = p.stdout.toString()
    const stderr = p.stderr.toString()
    expect(p.exitCode).toBe(0)
    return { result: JSON.parse(stdout.trim().split('\n').at(-1)!), stderr }
  }

  test('handles nobody disposed are freed by the FinalizationRegistry backstop (engine threads end)', () => {
    const gcScript = `
      import { readdirSync } from 'node:fs'
      import { NativeModel, NativeEngine } from './ffi/index'
      const threads = () => readdirSync('/proc/self/task').length
      const base = threads()
      ;(() => { for (let i = 0; i < 4; i++) new NativeEngine(NativeModel.load(process.argv[1]), { nThreads: 2 }) })()
      const made = threads()
      for (let i = 0; i < 100 && threads() > base; i++) { Bun.gc(true); await Bun.sleep(10) }
      console.log(JSON.stringify({ base, made, after: threads() }))`
    const p = Bun.spawnSync([BUN, '-e', gcScript, dir], { cwd: REPO })
    expect(p.exitCode).toBe(0)
    const t = JSON.parse(p.stdout.toString().trim())
    console.log('threads', t)
    expect(t.made).toBeGreaterThan(t.base)
    // JSC scans the stack conservatively, so one engine may stay reachable; most must be gone.
    expect(t.after).toBeLessThanOrEqual(t.base + (t.made - t.base) / 2)
  })

  test('MINICPM_FFI_POLL=1 selects polling and still delivers every event', () => {
    const { result } = run({ MINICPM_FFI_POLL: '1' })
    console.log('poll run', result)
    expect(result).toEqual({ polling: true, events: 4 })
  })

  test('MINICPM_TRACE_FFI=1 logs each call with arguments, result and time; off by default', () => {
    const traced = run({ MINICPM_TRACE_FFI: '1', MINICPM_FFI_POLL: '0' })
    const lines = traced.stderr.split('\n').filter((l) => l.startsWith('[ffi] '))
    console.log(`${lines.length} trace lines, e.g. ${lines.find((l) => l.includes('minicpm_engine_submit'))}`)
    expect(traced.result).toEqual({ polling: false, events: 4 })
    expect(
      lines.some((l) =>
        /^\[ffi\] minicpm_engine_submit\(\d+, Int32Array\(2\), 2, Uint8Array\(56\).* -> 0 [\d.]+us$/.test(l),
      ),
    ).toBe(true)
    expect(lines.some((l) => l.startsWith('[ffi] minicpm_engine_drain('))).toBe(true)
    const quiet = run({ MINICPM_FFI_POLL: '0' })
    expect(quiet.stderr).not.toContain('[ffi] ')
  })
})
