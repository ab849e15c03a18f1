/**
 * loadModel() + model.generate() end to end on the 'tiny' preset (real tokenizer, random weights): text
 * streaming, abort during prefill and during decoding, stop strings and stop ids, maxTokens, logprobs, and
 * the generation_config.json defaults.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { copyFileSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadModel, type GenerateEvent, type GenerateRequest, type Model } from '../src/index'
import { cachedCheckpoint } from './helpers/checkpoints'

let dir: string
let model: Model

beforeAll(async () => {
  dir = cachedCheckpoint('tiny', { preset: 'tiny' })
  // Small prefill chunks and a 1 ms progress tick: a long prompt reports progress on any machine speed.
  model = await loadModel(dir, { nChunk: 64, nCtx: 4096, prefillTickMs: 1 })
}, 60_000)
afterAll(() => model?.dispose())

async function run(req: GenerateRequest, onEvent?: (ev: GenerateEvent) => void) {
  const events: GenerateEvent[] = []
  for await (const ev of model.generate(req)) {
    events.push(ev)
    onEvent?.(ev)
  }
  const deltas = events.filter((e): e is Extract<GenerateEvent, { type: 'delta' }> => e.type === 'delta')
  const finish = events.at(-1) as Extract<GenerateEvent, { type: 'finish' }>
  expect(finish.type).toBe('finish')
  return { events, text: deltas.map((d) => d.text).join(''), tokens: deltas.flatMap((d) => d.tokens), finish, deltas }
}

/** Waits until the engine holds no request (cancelled ones are released at its next step). */
async function engineIdle(): Promise<ReturnType<Model['engine']['stats']>> {
  for (let i = 0; i < 200; i++) {
    const s = model.engine.stats()
    if (s.running === 0 && s.waiting === 0 && s.undrained === 0) return s
    await Bun.sleep(10)
  }
  return model.engine.stats()
}

const GREEDY = { temperature: 0, ignoreEos: true } as const

describe('generate', () => {
  test('streams text deltas that concatenate to the detokenized tokens', async () => {
    const r = await run({ prompt: 'Once upon a time', maxTokens: 12, ...GREEDY })
    const prompt = model.tokenize('Once upon a time')
    console.log(
      `prompt ${prompt.length} tokens; text ${JSON.stringify(r.text)}; timings ${JSON.stringify(r.finish.timings)}`,
    )
    expect(r.events[0]).toEqual({ type: 'start', promptTokens: prompt.length })
    expect(prompt[0]).toBe(1) // BOS
    expect(r.tokens.length).toBe(12)
    expect(r.text).toBe(model.detokenize(r.tokens))
    expect(r.finish.reason).toBe('length')
    expect(r.finish.usage).toEqual({ promptTokens: prompt.length, completionTokens: 12, cachedTokens: 0 })
    expect(r.finish.timings.perTokenMs).toBeGreaterThan(0)
    const again = await run({ prompt: 'Once upon a time', maxTokens: 12, ...GREEDY })
    expect(again.tokens).toEqual(r.tokens)
  })

  test('messages go through the chat template with BOS first', async () => {
    const messages = [{ role: 'user' as const, content: 'hi' }]
    const ids = model.tokenize(model.applyChatTemplate(messages))
    const viaMessages = await run({ messages, maxTokens: 4, ...GREEDY })
    const viaIds = await run({ prompt: ids, maxTokens: 4, ...GREEDY })
    console.log(`chat prompt ids ${ids.join(' ')}`)
    expect(ids[0]).toBe(1)
    expect(viaMessages.events[0]).toEqual({ type: 'start', promptTokens: ids.length })
    expect(viaMessages.tokens).toEqual(viaIds.tokens)
  })

  test('logprobs: one entry per token with its text and the requested alternatives', async () => {
    const r = await run({ prompt: 'abc', maxTokens: 5, logprobs: true, topLogprobs: 3, ...GREEDY })
    const lps = r.deltas.flatMap((d) => d.logprobs ?? [])
    console.log('first logprob', JSON.stringify(lps[0]))
    expect(lps.map((l) => l.token)).toEqual(r.tokens)
    for (const l of lps) {
      expect(l.text).toBe(model.tokenText(l.token))
      expect(l.logprob).toBeLessThanOrEqual(0)
      expect(l.top.length).toBe(3)
      // Greedy: the chosen token is the most likely one.
      expect(l.logprob).toBeCloseTo(l.top[0]!.logprob, 4)
    }
  })

  test('a stop string cuts the text exactly before it and ends the request with reason stop', async () => {
    // Seeded sampling is reproducible and, unlike greedy on random weights, does not repeat one token.
    const req = { prompt: 'The list:', maxTokens: 24, temperature: 1, seed: 42, ignoreEos: true }
    const full = await run(req)
    // A 3-character piece of the continuation whose first occurrence is a few characters in.
    let start = 4
    while (start + 3 < full.text.length && full.text.indexOf(full.text.slice(start, start + 3)) !== start) start++
    const stop = full.text.slice(start, start + 3)
    const expected = full.text.slice(0, start)
    expect(expected.length).toBeGreaterThan(0)
    const r = await run({ ...req, stop: [stop] })
    console.log(`full ${JSON.stringify(full.text)}; stop ${JSON.stringify(stop)} -> ${JSON.stringify(r.text)}`)
    expect(r.text).toBe(expected)
    expect(r.finish.reason).toBe('stop')
    expect(r.finish.usage.completionTokens).toBeLessThan(24)
    expect(await engineIdle()).toMatchObject({ running: 0, undrained: 0, kvTokensUsed: 0 })
  })

  test('a stop token id ends the request without its text', async () => {
    const full = await run({ prompt: 'x', maxTokens: 8, ...GREEDY })
    const stopId = full.tokens[3]!
    const cut = full.tokens.indexOf(stopId)
    const r = await run({ prompt: 'x', maxTokens: 8, stopTokenIds: [stopId], ...GREEDY })
    expect(r.finish.reason).toBe('stop')
    expect(r.tokens).toEqual(full.tokens.slice(0, cut))
    expect(r.finish.usage.completionTokens).toBe(cut + 1)
  })

  test('maxTokens ends with reason length', async () => {
    const r = await run({ prompt: 'a', maxTokens: 3, ...GREEDY })
    expect(r.finish).toMatchObject({ reason: 'length', usage: { completionTokens: 3 } })
  })
})

describe('cancellation', () => {
  test('abort during prefill: prefill progress, then cancelled with no tokens; the engine frees everything', async () => {
    const ac = new AbortController()
    const longPrompt = Array.from({ length: 3000 }, (_, i) => 100 + (i % 5000))
    const progress: Array<[number, number]> = []
    const r = await run({ prompt: longPrompt, maxTokens: 4, signal: ac.signal, ...GREEDY }, (ev) => {
      if (ev.type === 'prefill') {
        progress.push([ev.done, ev.total])
        ac.abort()
      }
    })
    console.log(
      `prefill progress ${JSON.stringify(progress)}, finish ${r.finish.reason}, timings ${JSON.stringify(r.finish.timings)}`,
    )
    expect(progress.length).toBeGreaterThan(0)
    expect(progress[0]![0]).toBeLessThan(3000)
    expect(progress[0]![1]).toBe(3000)
    expect(r.finish.reason).toBe('cancelled')
    expect(r.tokens.length).toBe(0)
    expect(await engineIdle()).toMatchObject({ running: 0, waiting: 0, undrained: 0, kvTokensUsed: 0 })
  })

  test('abort during generation ends with reason cancelled; running goes back to 0', async () => {
    const ac = new AbortController()
    let deltas = 0
    const r = await run({ prompt: 'count', maxTokens: 500, signal: ac.signal, ...GREEDY }, (ev) => {
      if (ev.type === 'delta' && ++deltas === 3) ac.abort()
    })
    console.log(`cancelled after ${r.finish.usage.completionTokens} tokens`)
    expect(r.finish.reason).toBe('cancelled')
    expect(r.finish.usage.completionTokens).toBeLessThan(500)
    expect(await engineIdle()).toMatchObject({ running: 0, undrained: 0, kvTokensUsed: 0 })
  })

  test('leaving the loop early cancels and releases the request', async () => {
    for await (const ev of model.generate({ prompt: 'loop', maxTokens: 500, ...GREEDY })) {
      if (ev.type === 'delta') break
    }
    expect(await engineIdle()).toMatchObject({ running: 0, undrained: 0, kvTokensUsed: 0 })
  })

  test('disposing the model ends a waiting generation with an error instead of hanging', async () => {
    using m = await loadModel(dir)
    const events: GenerateEvent[] = []
    for await (const ev of m.generate({ prompt: 'x', maxTokens: 100_000, ...GREEDY })) {
      events.push(ev)
      if (ev.type === 'delta') m.dispose()
    }
    const finish = events.at(-1)!
    console.log('after dispose:', JSON.stringify(finish))
    expect(finish).toMatchObject({ type: 'finish', reason: 'error', error: 'the model was disposed during generation' })
  }, 60_000)

  test('an already aborted signal never reaches the engine', async () => {
    const before = model.engine.stats().steps
    const r = await run({ prompt: 'x', signal: AbortSignal.abort() })
    expect(r.finish.reason).toBe('cancelled')
    expect(model.engine.stats().steps).toBe(before)
  })
})

describe('default model', () => {
  test('loadModel() with no directory generates the random-weight tiny model once and labels it', async () => {
    const cache = mkdtempSync(join(tmpdir(), 'minicpm-default-'))
    const saved = { cache: process.env.MINICPM_CACHE, model: process.env.MINICPM_MODEL }
    process.env.MINICPM_CACHE = cache
    delete process.env.MINICPM_MODEL
    try {
      const phases: string[] = []
      {
        using m = await loadModel(undefined, {
          onProgress: (phase, done, total) => done === total && phases.push(phase),
        })
        console.log(`default model ${m.info.id} at ${m.info.dir}; phases ${phases.join(', ')}`)
        expect(m.info).toMatchObject({ id: 'minicpm4-random-tiny', randomWeights: true, nVocab: 73448 })
        expect(m.info.dir).toBe(join(cache, 'minicpm4-random-tiny'))
        expect(phases).toContain('generate default model')
      }
      phases.length = 0
      using again = await loadModel(undefined, {
        onProgress: (phase, done, total) => done === total && phases.push(phase),
      })
      expect(again.info.id).toBe('minicpm4-random-tiny')
      expect(phases).not.toContain('generate default model') // cached
    } finally {
      process.env.MINICPM_CACHE = saved.cache
      if (saved.model !== undefined) process.env.MINICPM_MODEL = saved.model
      rmSync(cache, { recursive: true, force: true })
    }
  }, 60_000)
})

describe('generation defaults', () => {
  test('generation_config.json sampling applies when a request omits it', async () => {
    expect(model.generationDefaults).toEqual({ temperature: 0.8, topP: 0.8 })
    // temperature 0.8 from the defaults: two seeds sample differently over a near-uniform random model.
    const a = await run({ prompt: 'seed', maxTokens: 8, seed: 1, ignoreEos: true })
    const b = await run({ prompt: 'seed', maxTokens: 8, seed: 2, ignoreEos: true })
    expect(a.tokens).not.toEqual(b.tokens)

    // The same weights with do_sample false: the default becomes greedy, whatever the seed.
    const greedyDir = mkdtempSync(join(tmpdir(), 'minicpm-greedy-'))
    try {
      for (const f of readdirSync(dir)) {
        if (f.endsWith('.safetensors')) symlinkSync(join(dir, f), join(greedyDir, f))
        else copyFileSync(join(dir, f), join(greedyDir, f))
      }
      writeFileSync(
        join(greedyDir, 'generation_config.json'),
        JSON.stringify({ do_sample: false, eos_token_id: [2, 73440] }),
      )
      using greedy = await loadModel(greedyDir)
      expect(greedy.generationDefaults).toEqual({ temperature: 0 })
      const outs = []
      for (const seed of [1, 2]) {
        const toks: number[] = []
        for await (const ev of greedy.generate({ prompt: 'seed', maxTokens: 8, seed, ignoreEos: true })) {
          if (ev.type === 'delta') toks.push(...ev.tokens)
        }
        outs.push(toks)
      }
      const explicit = await run({ prompt: 'seed', maxTokens: 8, ...GREEDY })
      expect(outs[0]).toEqual(outs[1])
      expect(outs[0]).toEqual(explicit.tokens)
    } finally {
      rmSync(greedyDir, { recursive: true, force: true })
    }
  }, 60_000)
})
