/**
 * Prefix caching and router metrics through a real listening server on the tiny checkpoint (real tokenizer,
 * random weights), driven by the official `openai` client: a chat grown turn by turn reports
 * usage.prompt_tokens_details.cached_tokens (OpenAI and native), /metrics exports the names fleet routers
 * read (vllm:*) with the engine's own figures, and --no-prefix-cache (prefixCache: false) turns it off.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import OpenAI from 'openai'
import type { Model } from '../src/index.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

const extras = { ignore_eos: true, temperature: 0 } as Record<string, unknown>
const BLOCK = 64

let model: Model
let srv: RunningServer
let client: OpenAI
beforeAll(async () => {
  model = await loadTinyModel({ nCtx: 1024 })
  srv = await startServer({ model, port: 0, quiet: true, servedModelName: 'edge' })
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 })
}, LOAD_TIMEOUT_MS)
afterAll(async () => {
  await srv?.stop()
  model?.dispose()
})

/** One sample per series: name{labels} -> value. */
async function scrape(): Promise<Map<string, number>> {
  const text = await (await fetch(`${srv.url}/metrics`)).text()
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    out.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return out
}

const system = 'You are a careful assistant. '.repeat(30)

describe('prefix cache through the server', () => {
  test('a chat grown turn by turn reuses its history: cached_tokens per turn', async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: 'system', content: system },
      { role: 'user', content: 'Tell me about the sea.' },
    ]
    const rows: string[] = []
    let prevPrompt = 0
    for (let turn = 1; turn <= 3; turn++) {
      const r = await client.chat.completions.create({
        model: 'edge',
        messages,
        max_completion_tokens: 8,
        ...extras,
      })
      const usage = r.usage!
      const cached = usage.prompt_tokens_details?.cached_tokens ?? -1
      rows.push(`turn ${turn}: prompt ${usage.prompt_tokens}, cached ${cached}`)
      if (turn === 1) expect(cached).toBe(0)
      else {
        // At least every whole block of the previous turn's prompt (the rendered history is a prefix of this one).
        expect(cached).toBeGreaterThanOrEqual(Math.floor(prevPrompt / BLOCK) * BLOCK)
        expect(cached).toBeLessThan(usage.prompt_tokens)
        expect(cached % BLOCK === 0 || cached === usage.prompt_tokens - 1).toBe(true)
      }
      prevPrompt = usage.prompt_tokens
      messages.push({ role: 'assistant', content: r.choices[0]!.message.content ?? '' })
      messages.push({ role: 'user', content: `And turn ${turn + 1}?` })
    }
    console.log(rows.join('\n'))
  })

  test('streaming include_usage and the native endpoint carry cached_tokens too', async () => {
    const msgs = [
      { role: 'system' as const, content: system },
      { role: 'user' as const, content: 'Stream this.' },
    ]
    const stream = await client.chat.completions.create({
      model: 'edge',
      messages: msgs,
      max_tokens: 4,
      stream: true,
      stream_options: { include_usage: true },
      ...extras,
    })
    let usage: OpenAI.CompletionUsage | null | undefined
    for await (const ch of stream) if (ch.usage) usage = ch.usage
    expect(usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThanOrEqual(BLOCK) // the system prompt
    const res = await fetch(`${srv.url}/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: msgs, max_tokens: 4, stream: false, ignore_eos: true }),
    })
    const body = (await res.json()) as { usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } }
    console.log('native usage', body.usage, 'streamed usage', usage)
    // The same prompt again: all of it but the last token (the whole blocks, or n - 1).
    expect(body.usage.prompt_tokens_details.cached_tokens).toBe(
      Math.min(Math.floor(body.usage.prompt_tokens / BLOCK) * BLOCK, body.usage.prompt_tokens - 1),
    )
  })
})

describe('router metrics', () => {
  test('vllm:* names under load match the engine stats', async () => {
    // Load: 6 concurrent streams; scrape while they run.
    const runs = Array.from({ length: 6 }, (_, i) =>
      client.chat.completions.create({
        model: 'edge',
        messages: [{ role: 'user', content: `Load ${i}: ${'word '.repeat(80)}` }],
        max_tokens: 24,
        ...extras,
      }),
    )
    let seenBusy = false
    for (let i = 0; i < 50 && !seenBusy; i++) {
      const m = await scrape()
      const running = m.get('vllm:num_requests_running{model_name="edge"}')!
      const waiting = m.get('vllm:num_requests_waiting{model_name="edge"}')!
      const usage = m.get('vllm:kv_cache_usage_perc{model_name="edge"}')!
      expect(running + waiting).toBeLessThanOrEqual(6)
      expect(usage).toBeGreaterThanOrEqual(0)
      expect(usage).toBeLessThanOrEqual(1)
      if (running > 0) {
        seenBusy = true
        console.log(`under load: running ${running}, waiting ${waiting}, kv_cache_usage_perc ${usage}`)
        expect(usage).toBeGreaterThan(0)
        expect(m.get('minicpm:num_requests_running')).toBe(running)
      }
    }
    expect(seenBusy).toBe(true)
    await Promise.all(runs)
    const m = await scrape()
    const s = model.stats()
    const cfg = [...m.keys()].find((k) => k.startsWith('vllm:cache_config_info{'))!
    console.log(cfg, 'stats', s)
    expect(cfg).toContain('block_size="64"')
    expect(cfg).toContain(`num_gpu_blocks="${s.kvTokensTotal / BLOCK}"`)
    expect(cfg).toContain('enable_prefix_caching="True"')
    expect(m.get(cfg)).toBe(1)
    expect(m.get('vllm:num_requests_running{model_name="edge"}')).toBe(0)
    expect(m.get('vllm:kv_cache_usage_perc{model_name="edge"}')).toBe(0)
    expect(m.get('vllm:gpu_cache_usage_perc{model_name="edge"}')).toBe(0)
    expect(m.get('vllm:prefix_cache_queries_total{model_name="edge"}')).toBe(s.prefixQueryTokens)
    expect(m.get('vllm:prefix_cache_hits_total{model_name="edge"}')).toBe(s.prefixHitTokens)
    expect(m.get('minicpm:prefix_cache_hits_total')).toBe(s.prefixHitTokens)
    expect(m.get('minicpm:prefix_cache_evictions_total')).toBe(s.prefixEvictions)
    expect(m.get('minicpm:kv_cache_tokens_cached')).toBe(s.kvTokensCached)
    expect(s.prefixHitTokens).toBeGreaterThan(0)
    expect(m.get('vllm:gpu_prefix_cache_hit_rate{model_name="edge"}')).toBeCloseTo(
      s.prefixHitTokens / s.prefixQueryTokens,
      12,
    )
  })
})

describe('prefixCache: false (--no-prefix-cache)', () => {
  test('nothing is cached or reported', async () => {
    using off = await loadTinyModel({ prefixCache: false })
    const prompt = 'x '.repeat(200)
    const fins = []
    for (let i = 0; i < 2; i++) {
      for await (const ev of off.generate({ prompt, maxTokens: 2, temperature: 0 })) {
        if (ev.type === 'finish') fins.push(ev.usage)
      }
    }
    const s = off.stats()
    console.log('cache off:', fins, { prefixCache: s.prefixCache, kvTokensCached: s.kvTokensCached })
    expect(fins.map((u) => u.cachedTokens)).toEqual([0, 0])
    expect(s.prefixCache).toBe(0)
    expect(s.kvTokensCached).toBe(0)
  })
})
