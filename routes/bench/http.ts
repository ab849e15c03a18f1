/**
 * @module
 * HTTP benchmark: aggregate generated tok/s and TTFT at 1, 8 and 32 concurrent streams through the
 * server (POST /generate, SSE; clients in a Worker) against the same load on model.generate()
 * directly, plus /health latency while the engine is saturated. Prints numbers; asserts nothing.
 *
 * Run: `bun run bench:http [--model DIR] [--tokens N] [--concurrency 1,8,32]`
 */

import { parseArgs } from 'node:util'
import type { GenerateRequest, Model } from '../../src/index.ts'
import { startServer } from '../server.ts'
import type { StreamStat, WorkerJob, WorkerResult } from './http-worker.ts'

export interface HttpBenchOptions {
  model: Model
  concurrency?: number[]
  maxTokens?: number
  prompt?: string
  log?: (line: string) => void
}

export interface LoadResult {
  concurrency: number
  tokens: number
  wallS: number
  tokPerS: number
  ttftP50Ms: number
  ttftP99Ms: number
}

export interface HttpBenchRow {
  engine: LoadResult
  http: LoadResult
  healthP50Ms: number
  healthP99Ms: number
  /** Process CPU per generated token; the difference is what HTTP (server + client) costs. */
  engineCpuUsPerToken: number
  httpCpuUsPerToken: number
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!
}

function summarize(c: number, wallS: number, rs: StreamStat[]): LoadResult {
  const tokens = rs.reduce((n, r) => n + r.tokens, 0)
  const ttft = rs.map((r) => r.ttftMs)
  return {
    concurrency: c,
    tokens,
    wallS,
    tokPerS: tokens / wallS,
    ttftP50Ms: pct(ttft, 0.5),
    ttftP99Ms: pct(ttft, 0.99),
  }
}

/** The HTTP streams and /health probes, from a Worker (see http-worker.ts). */
function httpLoad(job: WorkerJob): Promise<{ http: LoadResult; healthMs: number[] }> {
  const worker = new Worker(new URL('./http-worker.ts', import.meta.url).href)
  return new Promise<{ http: LoadResult; healthMs: number[] }>((resolve, reject) => {
    worker.onmessage = (e: MessageEvent<WorkerResult>) =>
      resolve({
        http: summarize(job.concurrency, e.data.wallS, e.data.streams),
        healthMs: e.data.healthMs,
      })
    worker.onerror = (e) => reject(new Error(`benchmark worker failed: ${e.message}`))
    worker.postMessage(job)
  }).finally(() => worker.terminate())
}

async function runLoad(c: number, one: (i: number) => Promise<StreamStat>): Promise<LoadResult> {
  const t0 = performance.now()
  const rs = await Promise.all(Array.from({ length: c }, (_, i) => one(i)))
  return summarize(c, (performance.now() - t0) / 1000, rs)
}

/** Process CPU time (all threads: engine, server, client worker) spent in `fn`, in µs. */
async function cpuOf<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const c0 = process.cpuUsage()
  const r = await fn()
  const d = process.cpuUsage(c0)
  return [r, d.user + d.system]
}

function engineStream(model: Model, req: GenerateRequest): Promise<StreamStat> {
  return (async () => {
    const t0 = performance.now()
    let ttftMs = NaN
    let tokens = 0
    for await (const ev of model.generate(req)) {
      if (ev.type === 'delta' && ev.tokens.length > 0) {
        if (tokens === 0) ttftMs = performance.now() - t0
        tokens += ev.tokens.length
      }
    }
    return { ttftMs, tokens }
  })()
}

const f = (x: number, d = 1) => x.toFixed(d)

const COLUMNS = [
  'conc',
  'engine tok/s',
  'engine TTFT p50/p99 ms',
  'http tok/s',
  'http TTFT p50/p99 ms',
  'http/engine',
  'CPU us/token engine/http',
  '/health p50/p99 ms',
  'probes',
]

/** One table line, every cell right-aligned to its column's header width. */
export function tableRow(cells: string[]): string {
  return cells.map((c, i) => c.padStart(Math.max(COLUMNS[i]!.length, c.length))).join('  ')
}

/** Runs the comparison for each concurrency level and returns (and logs) one row per level. */
export async function benchHttp(opts: HttpBenchOptions): Promise<HttpBenchRow[]> {
  const { model } = opts
  const maxTokens = opts.maxTokens ?? 32
  const prompt =
    opts.prompt ?? 'The quick brown fox jumps over the lazy dog. Tell me a story about it.'
  const log = opts.log ?? ((l: string) => console.log(l))
  const req = (i: number) => ({
    prompt: `${prompt} #${i}`,
    maxTokens,
    ignoreEos: true,
    temperature: 0,
  })
  const srv = await startServer({ model, port: 0, quiet: true, maxInFlight: 1024 })
  const rows: HttpBenchRow[] = []
  try {
    // Warm-up: first-use costs (page faults on weights, JIT) stay out of the numbers.
    await engineStream(model, { ...req(0), maxTokens: 4 })
    log(
      `model ${model.info.id}${model.info.randomWeights ? ' (RANDOM weights: the generated tiny default model unless --model is given)' : ''}: ` +
        `${maxTokens} tokens per stream, greedy, ignore_eos`,
    )
    log(tableRow(COLUMNS))
    for (const c of opts.concurrency ?? [1, 8, 32]) {
      const [engine, engineCpu] = await cpuOf(() => runLoad(c, (i) => engineStream(model, req(i))))
      const [{ http, healthMs }, httpCpu] = await cpuOf(() =>
        httpLoad({ url: srv.url, concurrency: c, prompt, maxTokens }),
      )
      const row: HttpBenchRow = {
        engine,
        http,
        healthP50Ms: pct(healthMs, 0.5),
        healthP99Ms: pct(healthMs, 0.99),
        engineCpuUsPerToken: engineCpu / engine.tokens,
        httpCpuUsPerToken: httpCpu / http.tokens,
      }
      rows.push(row)
      log(
        tableRow([
          String(c),
          f(engine.tokPerS),
          `${f(engine.ttftP50Ms)}/${f(engine.ttftP99Ms)}`,
          f(http.tokPerS),
          `${f(http.ttftP50Ms)}/${f(http.ttftP99Ms)}`,
          f(http.tokPerS / engine.tokPerS, 3),
          `${f(row.engineCpuUsPerToken, 0)}/${f(row.httpCpuUsPerToken, 0)}`,
          `${f(row.healthP50Ms, 2)}/${f(row.healthP99Ms, 2)}`,
          String(healthMs.length),
        ]),
      )
    }
    log(
      'http/engine: HTTP tok/s over engine tok/s for the same load, run one after the other; HTTP costs show as ' +
        'a value below 1, and a value above 1 is run-to-run variation (batching, CPU frequency), not a speed-up.',
    )
  } finally {
    await srv.stop()
  }
  return rows
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      tokens: { type: 'string', default: '32' },
      concurrency: { type: 'string', default: '1,8,32' },
      threads: { type: 'string' },
    },
  })
  const { loadModel } = await import('../../src/index.ts')
  const model = await loadModel(values.model, {
    nBatchMax: 32,
    nThreads: values.threads ? Number(values.threads) : undefined,
  })
  try {
    await benchHttp({
      model,
      maxTokens: Number(values.tokens),
      concurrency: values.concurrency!.split(',').map(Number),
    })
  } finally {
    model.dispose()
  }
}
