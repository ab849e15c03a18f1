/**
 * /metrics against what real fleet routers scrape (tests/fixtures/router-metrics.ts, read from the endpoint
 * picker's, llm-d's and production-stack's source): under load (more requests than the batch holds, so some
 * wait), every series is there with the type and labels the router reads, parsed by a Prometheus text-format
 * parser (parse-prometheus-text-format, not regexes), and its value lies between the engine stats read just
 * before and just after the scrape; once idle, the values equal the engine stats.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import parsePrometheus from 'parse-prometheus-text-format'
import type { EngineStats, Model } from '../src/index.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { ROUTER_SCRAPED } from './fixtures/router-metrics.ts'
import { LOAD_TIMEOUT_MS, loadTinyModel } from './helpers/server-model.ts'

const BLOCK = 64
const BATCH = 2

let model: Model
let srv: RunningServer
beforeAll(async () => {
  model = await loadTinyModel({ nCtx: 1024, nBatchMax: BATCH })
  srv = await startServer({ model, port: 0, quiet: true, servedModelName: 'edge' })
}, LOAD_TIMEOUT_MS)
afterAll(async () => {
  await srv?.stop()
  model?.dispose()
})

interface Family {
  name: string
  type: string
  metrics: Array<{ value: string; labels?: Record<string, string> }>
}

/** One scrape parsed, between two engine-stat reads. */
async function scrape(): Promise<{ families: Map<string, Family>; before: EngineStats; after: EngineStats }> {
  const before = model.stats()
  const text = await (await fetch(`${srv.url}/metrics`)).text()
  const after = model.stats()
  const families = new Map((parsePrometheus(text) as Family[]).map((f) => [f.name, f]))
  return { families, before, after }
}

const usage = (s: EngineStats) => (s.kvTokensTotal > 0 ? s.kvTokensUsed / s.kvTokensTotal : 0)
const hitRate = (s: EngineStats) => (s.prefixQueryTokens > 0 ? s.prefixHitTokens / s.prefixQueryTokens : 0)

/** The engine figure each scraped series must carry (null: checked through its labels). */
const EXPECTED: Record<string, ((s: EngineStats) => number) | null> = {
  'vllm:num_requests_waiting': (s) => s.waiting,
  'vllm:num_requests_running': (s) => s.running,
  'vllm:kv_cache_usage_perc': usage,
  'vllm:gpu_cache_usage_perc': usage,
  'vllm:gpu_prefix_cache_hit_rate': hitRate,
  'vllm:gpu_prefix_cache_hits_total': (s) => s.prefixHitTokens,
  'vllm:gpu_prefix_cache_queries_total': (s) => s.prefixQueryTokens,
  'vllm:cache_config_info': null,
  'vllm:lora_requests_info': null,
}

const GAUGES = ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc']

/** Problems with one scrape: a missing series, wrong type or labels, or a value outside [before, after]. */
function problems(sc: Awaited<ReturnType<typeof scrape>>, exact: boolean): string[] {
  const out: string[] = []
  for (const want of ROUTER_SCRAPED) {
    const f = sc.families.get(want.name)
    if (!f) {
      out.push(`${want.name}: missing`)
      continue
    }
    if (f.type !== want.type.toUpperCase()) out.push(`${want.name}: type ${f.type}, routers read a ${want.type}`)
    if (f.metrics.length !== 1) out.push(`${want.name}: ${f.metrics.length} series, expected 1`)
    const m = f.metrics[0]!
    const value = Number(m.value)
    if (!Number.isFinite(value)) out.push(`${want.name}: value ${m.value} is not a number`)
    for (const l of want.labels) if (m.labels?.[l] === undefined) out.push(`${want.name}: no label ${l}`)
    const figure = EXPECTED[want.name]
    if (figure === undefined) out.push(`${want.name}: no engine figure to compare with (add it to EXPECTED)`)
    else if (figure) {
      const [a, b] = [figure(sc.before), figure(sc.after)]
      const [lo, hi] = exact ? [b, b] : [Math.min(a, b), Math.max(a, b)]
      if (value < lo - 1e-12 || value > hi + 1e-12) out.push(`${want.name}: ${value}, engine ${a} before / ${b} after the scrape`)
    }
  }
  const cfg = sc.families.get('vllm:cache_config_info')?.metrics[0]?.labels ?? {}
  if (cfg.block_size !== String(BLOCK)) out.push(`cache_config_info block_size ${cfg.block_size}, engine ${BLOCK}`)
  if (cfg.num_gpu_blocks !== String(sc.after.kvTokensTotal / BLOCK)) out.push(`cache_config_info num_gpu_blocks ${cfg.num_gpu_blocks}, engine ${sc.after.kvTokensTotal / BLOCK}`)
  const lora = sc.families.get('vllm:lora_requests_info')?.metrics[0]
  if (lora && !(Number.isInteger(Number(lora.labels?.max_lora)) && Number(lora.value) > 0)) out.push(`lora_requests_info: max_lora ${lora.labels?.max_lora}, value ${lora.value}`)
  return out
}

const complete = (prompt: string, maxTokens: number) =>
  fetch(`${srv.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'edge', prompt, max_tokens: maxTokens, ignore_eos: true, temperature: 0 }),
  }).then((r) => r.json())

describe('router metrics, as the routers read them', () => {
  test('every series routers scrape is exposed, typed and labelled as they read it, with engine values under load', async () => {
    console.log(`  fixture: ${ROUTER_SCRAPED.length} series (${ROUTER_SCRAPED.map((s) => s.name).join(', ')})`)
    const shared = 'A long shared system prompt for the prefix cache. '.repeat(20)
    await complete(shared + 'first', 2)
    await complete(shared + 'second', 2) // a prefix-cache hit: the hit counters move
    const load = Array.from({ length: 3 * BATCH }, (_, i) => complete(`${shared} load ${i}`, 160))
    let busy = 0
    let unstable = 0
    const failures: string[] = []
    for (let i = 0; i < 200 && busy < 5; i++) {
      const sc = await scrape()
      const running = Number(sc.families.get('vllm:num_requests_running')?.metrics[0]?.value)
      const waiting = Number(sc.families.get('vllm:num_requests_waiting')?.metrics[0]?.value)
      // A gauge can rise and fall again between the two stats reads around a scrape, and then no bound holds:
      // only scrapes the engine gauges did not move across are compared (counters only ever grow).
      const moved = GAUGES.some((g) => EXPECTED[g]!(sc.before) !== EXPECTED[g]!(sc.after))
      if (moved) unstable++
      if (running === 0 || waiting === 0 || moved) {
        await Bun.sleep(5)
        continue
      }
      busy++
      failures.push(...problems(sc, false))
      console.log(
        `  under load: running ${running}, waiting ${waiting}, kv_cache_usage_perc ${sc.families.get('vllm:kv_cache_usage_perc')?.metrics[0]?.value}, ` +
          `engine running ${sc.before.running}/${sc.after.running} waiting ${sc.before.waiting}/${sc.after.waiting}`,
      )
    }
    await Promise.all(load)
    const idle = await scrape()
    failures.push(...problems(idle, true))
    for (const want of ROUTER_SCRAPED) {
      const m = idle.families.get(want.name)?.metrics[0]
      console.log(`  idle ${want.name.padEnd(36)} ${m?.value} ${JSON.stringify(m?.labels ?? {})}  [${want.routers.join(', ')}]`)
    }
    for (const f of failures) console.log(`  FAIL ${f}`)
    console.log(`  ${busy} scrapes under load (running and waiting > 0) + 1 idle: ${failures.length} problems (${unstable} scrapes skipped: engine gauges moved during them)`)
    expect(busy).toBeGreaterThanOrEqual(3)
    expect(idle.after.prefixHitTokens).toBeGreaterThan(0)
    expect(failures).toEqual([])
  }, 120_000)
})
