/**
 * NativeEngine behaviour on the 'tiny' checkpoint (real vocab, hidden 64): continuous batching
 * gives each request the tokens it gets alone, cancel frees everything, seeds reproduce, limits and
 * logprobs hold.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'

import {
  NativeContext,
  NativeEngine,
  NativeModel,
  type NativeEvent,
  type NativeSampling,
} from '../ffi'
import { cachedCheckpoint, promptTokens } from './helpers/checkpoints'

setDefaultTimeout(60_000) // real decoding on 2 shared cores

const VOCAB = 73448
let model: NativeModel
let engine: NativeEngine

beforeAll(() => {
  model = NativeModel.load(
    cachedCheckpoint('tiny-untied', { preset: 'tiny', tied: false, seed: 5 }),
  )
  engine = new NativeEngine(model, { nThreads: 2, nCtx: 4096, nChunk: 64 })
})
afterAll(() => {
  engine.dispose()
  model.dispose()
})

/** Drains a request until its finish event (the listener is registered in the submit tick). */
function collect(id: number, timeoutMs = 30_000): Promise<NativeEvent[]> {
  return new Promise((resolve, reject) => {
    const events: NativeEvent[] = []
    const timer = setTimeout(
      () => reject(new Error(`request ${id} did not finish within ${timeoutMs} ms`)),
      timeoutMs,
    )
    const pump = () => {
      for (const e of engine.drain(id)) events.push(e)
      if (events.at(-1)?.finish !== undefined && events.at(-1)!.finish !== 'none') {
        clearTimeout(timer)
        resolve(events)
      }
    }
    engine.onReady(id, pump)
    pump()
  })
}

const tokensOf = (events: NativeEvent[]) => events.filter((e) => e.token >= 0).map((e) => e.token)

function run(prompt: number[], sampling: NativeSampling): Promise<NativeEvent[]> {
  return collect(engine.submit(prompt, sampling))
}

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await Bun.sleep(1)
  }
}

function argmax(row: Float32Array): number {
  let best = 0
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i
  return best
}

const GREEDY: NativeSampling = { temperature: 0, maxTokens: 12, ignoreEos: true }

describe('NativeEngine', () => {
  test('concurrent greedy requests equal each alone; first token = context argmax', async () => {
    const prompts = [
      promptTokens(3, VOCAB, 51),
      promptTokens(20, VOCAB, 52),
      promptTokens(150, VOCAB, 53),
    ]
    const sampling = { ...GREEDY, maxTokens: 32 }
    const steps0 = engine.stats().steps
    const together = await Promise.all(prompts.map((p) => run(p, sampling)))
    const stepsTogether = engine.stats().steps - steps0
    const alone: number[][] = []
    const steps1 = engine.stats().steps
    for (const p of prompts) alone.push(tokensOf(await run(p, sampling)))
    const stepsAlone = engine.stats().steps - steps1
    // They really ran together: batched, the three took fewer engine steps than one after the other.
    console.log(`engine steps: ${stepsTogether} together, ${stepsAlone} one after the other`)
    expect(stepsTogether).toBeLessThan(stepsAlone)
    together.forEach((ev, k) => {
      console.log(
        `prompt ${prompts[k]!.length}: batched ${tokensOf(ev).join(' ')} | alone ${alone[k]!.join(' ')}`,
      )
      expect(ev.at(-1)!.finish).toBe('length')
      expect(tokensOf(ev)).toEqual(alone[k]!)
      expect(alone[k]!.length).toBe(sampling.maxTokens)
    })
    // The engine's KV cache is bf16 by default; the context must match to reproduce its logits.
    using ctx = new NativeContext(model, { nThreads: 2, nCtx: 256, kvDtype: 'bf16' })
    for (const [k, p] of prompts.entries()) {
      ctx.truncate(0, 0)
      expect(alone[k]![0]).toBe(argmax(ctx.eval(p)[0]!))
    }
  })

  test('cancel during prefill', async () => {
    using slow = new NativeEngine(model, { nThreads: 2, nCtx: 4096, nChunk: 8 })
    const id = slow.submit(promptTokens(3000, VOCAB, 61), GREEDY)
    await until('prefill to start', () => (slow.requestInfo(id)?.nPrefilled ?? 0) > 0)
    const info = slow.requestInfo(id)!
    console.log(`cancel at state=${info.state} prefilled ${info.nPrefilled}/${info.nPrompt}`)
    expect(info.state).toBe('prefilling')
    expect(slow.cancel(id)).toBe(true)
    const events: NativeEvent[] = []
    await until('the cancelled event', () => {
      events.push(...slow.drain(id))
      return events.length > 0 && events.at(-1)!.finish !== 'none'
    })
    expect(events.at(-1)!.finish).toBe('cancelled')
    expect(tokensOf(events)).toEqual([])
    const st = slow.stats()
    console.log(`after cancel: running ${st.running} kvTokensUsed ${st.kvTokensUsed}`)
    expect(st.running).toBe(0)
    expect(st.kvTokensUsed).toBe(0)
    expect(slow.cancel(id)).toBe(false)
  })

  test('cancel during decode', async () => {
    const id = engine.submit(promptTokens(10, VOCAB, 71), {
      temperature: 0,
      maxTokens: 100_000,
      ignoreEos: true,
    })
    const events: NativeEvent[] = []
    await until('3 decoded tokens', () => {
      events.push(...engine.drain(id))
      return tokensOf(events).length >= 3
    })
    expect(engine.requestInfo(id)!.state).toBe('decoding')
    expect(engine.cancel(id)).toBe(true)
    await until('the cancelled event', () => {
      events.push(...engine.drain(id))
      return events.at(-1)!.finish !== 'none'
    })
    const st = engine.stats()
    console.log(
      `cancelled after ${tokensOf(events).length} tokens: running ${st.running} kvTokensUsed ${st.kvTokensUsed}`,
    )
    expect(events.at(-1)!.finish).toBe('cancelled')
    expect(st.running).toBe(0)
    expect(st.kvTokensUsed).toBe(0)
  })

  test('same seed at temperature 1 reproduces the tokens; another seed differs', async () => {
    const prompt = promptTokens(8, VOCAB, 81)
    const sampling = { temperature: 1, maxTokens: 16, ignoreEos: true }
    const a = tokensOf(await run(prompt, { ...sampling, seed: 1234 }))
    const b = tokensOf(await run(prompt, { ...sampling, seed: 1234 }))
    const c = tokensOf(await run(prompt, { ...sampling, seed: 4321 }))
    console.log(`seed 1234: ${a.join(' ')}\nseed 1234: ${b.join(' ')}\nseed 4321: ${c.join(' ')}`)
    expect(a.length).toBe(16)
    expect(b).toEqual(a)
    expect(c).not.toEqual(a)
  })

  test('maxTokens ends with length', async () => {
    const events = await run(promptTokens(5, VOCAB, 91), {
      temperature: 0,
      maxTokens: 5,
      ignoreEos: true,
    })
    expect(tokensOf(events).length).toBe(5)
    expect(events.at(-1)!.finish).toBe('length')
  })

  test('logprobs: <= 0, top list sorted, first token matches the context log-softmax', async () => {
    const prompt = promptTokens(12, VOCAB, 101)
    const events = await run(prompt, {
      temperature: 0,
      maxTokens: 6,
      ignoreEos: true,
      logprobs: true,
      topLogprobs: 3,
    })
    const toks = events.filter((e) => e.token >= 0)
    expect(toks.length).toBe(6)
    for (const e of toks) {
      expect(Number.isFinite(e.logprob)).toBe(true)
      expect(e.logprob).toBeLessThanOrEqual(0)
      expect(e.top.length).toBe(3)
      expect(e.top[0]!.token).toBe(e.token) // greedy picks the most likely token
      for (let k = 1; k < 3; k++)
        expect(e.top[k]!.logprob).toBeLessThanOrEqual(e.top[k - 1]!.logprob)
    }
    using ctx = new NativeContext(model, { nThreads: 2, nCtx: 64, kvDtype: 'bf16' })
    const row = ctx.eval(prompt)[0]!
    let mx = -Infinity
    for (const v of row) mx = Math.max(mx, v)
    let sum = 0
    for (const v of row) sum += Math.exp(v - mx)
    const want = row[toks[0]!.token]! - mx - Math.log(sum)
    console.log(
      `first token logprob: engine ${toks[0]!.logprob}, log-softmax of context logits ${want}`,
    )
    expect(Math.abs(toks[0]!.logprob - want)).toBeLessThan(1e-5)
  })
})
