/**
 * @module
 * startServer: Bun.serve over createApp. Listens at once (health answers 503 while the model loads),
 * binds 127.0.0.1 unless told otherwise, and lifts Bun's idle timeout for a generation once the engine
 * accepted it (its stream may sit silent through a long prefill; pings cover the client side): header
 * and body reads keep the timeout on every route, so a client that never finishes its request is cut.
 * At most `maxConnections` requests are open at once (bodies being read and streams included); more
 * get 503 + connection: close at once.
 */

import { readFileSync } from 'node:fs'
import { createApp, type AppOptions, type ServedModel } from './app.ts'
import { errorResponse, unavailable } from './errors.ts'
import type { ServerMetrics } from './server-metrics.ts'
import { formatEvent, RequestTracker } from './access-log.ts'
import { Shutdown } from './shutdown.ts'
import type { LoadOptions } from '../src/runtime/load.ts'

export interface ServerOptions
  extends Omit<AppOptions, 'model' | 'onLongRequest' | 'connections' | 'onMetrics' | 'tracker' | 'shutdown'> {
  /** A loaded model (or its promise). Omitted: loadModel(modelDir, load) is started here. */
  model?: ServedModel | Promise<ServedModel>
  modelDir?: string
  load?: LoadOptions
  /** Default 127.0.0.1: reachable from other machines only when asked for. */
  host?: string
  /** Default 8080; 0 picks a free port. */
  port?: number
  /** Seconds a connection may idle outside generation requests (Bun's limit is 255); default 120. */
  idleTimeoutS?: number
  /** No access log (by default one line per request goes to stderr). */
  quiet?: boolean
  /** Most requests open at once (bodies being read, streams) before 503; default 1024. */
  maxConnections?: number
  /** Warnings (e.g. a public bind without an API key); default stderr unless quiet. */
  warn?: (line: string) => void
  /** Seconds stop() lets requests in flight finish before cutting them; default 0. */
  shutdownTimeoutS?: number
  /** While busy, one throughput line (tokens/s, running, waiting, KV use) every this many seconds; 0 = off (default). */
  statsIntervalS?: number
}

export interface RunningServer {
  url: string
  port: number
  /** The model once loaded (rejects if loading failed). */
  model: Promise<ServedModel>
  /** Requests until their last byte (streams included). */
  readonly open: number
  /**
   * Stops listening, refuses new requests (503), lets the ones in flight finish for up to `drainS` seconds
   * (default: shutdownTimeoutS) or until `now` aborts, then cuts the rest (error frame, and `[DONE]` on SSE),
   * closes every connection and disposes the model if this server loaded it.
   */
  stop(opts?: { drainS?: number; now?: AbortSignal }): Promise<void>
}

/**
 * Starts the HTTP server.
 *
 * @example
 * const srv = await startServer({ modelDir: '/models/MiniCPM4-0.5B', port: 8080, apiKey: 'sk-local' })
 * console.log(`listening on ${srv.url}`)
 * await srv.stop()
 */
export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const ownsModel = opts.model == null
  const model: Promise<ServedModel> =
    opts.model != null
      ? Promise.resolve(opts.model)
      : import('../src/index.ts').then(({ loadModel }) => loadModel(opts.modelDir, opts.load))
  // The rejection is reported by /health and the model routes; keep it from being unhandled here.
  model.catch(() => {})
  let server: ReturnType<typeof Bun.serve> | null = null
  const maxConnections = opts.maxConnections ?? 1024
  let metrics: ServerMetrics | null = null
  const tracker = new RequestTracker()
  const shutdown = new Shutdown()
  const log = opts.quiet ? undefined : (opts.log ?? ((line: string) => process.stderr.write(`${line}\n`)))
  const app = createApp({
    ...opts,
    log,
    model,
    tracker,
    shutdown,
    onLongRequest: (req) => server?.timeout(req, 0),
    onMetrics: (m) => (metrics = m),
    connections: () => ({
      open: server ? openConnections(server.port!) : 0,
      requests: server?.pendingRequests ?? 0,
    }),
  })
  const hostname0 = opts.host ?? '127.0.0.1'
  const warn = opts.warn ?? (opts.quiet ? () => {} : (line: string) => process.stderr.write(`${line}\n`))
  const exposed = publicBindWarning(hostname0, opts.apiKey)
  if (exposed) warn(exposed)
  server = Bun.serve({
    hostname: hostname0,
    port: opts.port ?? 8080,
    idleTimeout: opts.idleTimeoutS ?? 120,
    fetch: (req, srv) => {
      if (srv.pendingRequests > maxConnections) {
        metrics?.refused.inc()
        const e = unavailable(`too many open requests (limit ${maxConnections}), retry later`)
        return errorResponse(e, { connection: 'close' })
      }
      return app.fetch(req, srv)
    },
  })
  const hostname = server.hostname ?? opts.host ?? '127.0.0.1'
  const host = hostname.includes(':') ? `[${hostname}]` : hostname
  const url = `http://${host}:${server.port}`
  const stats = statsTicker(model, opts, log)
  let stopped = false
  return {
    url,
    port: server.port!,
    model,
    get open() {
      return tracker.open
    },
    async stop({ drainS = opts.shutdownTimeoutS ?? 0, now } = {}) {
      if (stopped) return
      stopped = true
      clearInterval(stats)
      shutdown.draining = true
      void server!.stop(false) // no new connections; requests in flight go on
      // Settled: every response written out (Bun's own count covers the last bytes on the socket).
      const busy = () => tracker.open > 0 || server!.pendingRequests > 0
      const settled = async (ms: number, also?: AbortSignal) => {
        const end = performance.now() + ms
        while (busy() && performance.now() < end && !also?.aborted) await Bun.sleep(10)
      }
      if (drainS > 0 && !now?.aborted) await settled(drainS * 1000, now)
      if (busy()) {
        shutdown.cancelAll()
        // The engine ends them at its next step; give their last frames a moment to reach the clients.
        await settled(2000)
      }
      await server!.stop(true)
      if (ownsModel) {
        const m = (await model.catch(() => null)) as (ServedModel & { dispose?: () => void }) | null
        m?.dispose?.()
      }
    },
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

/** The warning for a bind other machines can reach with no API key (null when there is nothing to say). */
export function publicBindWarning(host: string, apiKey: string | undefined): string | null {
  if (apiKey || isLoopback(host)) return null
  return (
    `minicpm-edge serve: WARNING: listening on ${host} without an API key: anyone who can reach ` +
    'this port can use the model (set --api-key or MINICPM_API_KEY)'
  )
}

/**
 * TCP connections accepted on `port` and not yet closed, from /proc/net/tcp{,6} (Linux; 0 elsewhere).
 * Bun.serve has no accept hook, so this also sees sockets whose request headers never completed.
 */
export function openConnections(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`
  let n = 0
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(f, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n')) {
      const cols = line.trim().split(/\s+/)
      // local_address ends in the port; st: 0A = LISTEN, 06 = TIME_WAIT, 07 = CLOSE (no socket held)
      if (cols[1]?.endsWith(hex) && cols[3] !== '0A' && cols[3] !== '06' && cols[3] !== '07') n++
    }
  }
  return n
}

/** vLLM-style periodic throughput line while the engine is busy. */
function statsTicker(
  model: Promise<ServedModel>,
  opts: ServerOptions,
  log: ((line: string) => void) | undefined,
): ReturnType<typeof setInterval> | undefined {
  const every = opts.statsIntervalS ?? 0
  if (!log || every <= 0) return undefined
  let last: { prompt: number; gen: number; t: number } | null = null
  let loaded: ServedModel | null = null
  model.then((m) => (loaded = m)).catch(() => {})
  const timer = setInterval(() => {
    if (!loaded) return
    const s = loaded.stats()
    const now = performance.now()
    const prev = last ?? { prompt: s.promptTokens, gen: s.generatedTokens, t: now - every * 1000 }
    last = { prompt: s.promptTokens, gen: s.generatedTokens, t: now }
    const dt = (now - prev.t) / 1000
    const prompt = (s.promptTokens - prev.prompt) / dt
    const gen = (s.generatedTokens - prev.gen) / dt
    if (prompt === 0 && gen === 0 && s.running === 0 && s.waiting === 0) return
    const kv = s.kvTokensTotal > 0 ? (100 * s.kvTokensUsed) / s.kvTokensTotal : 0
    const message =
      `throughput: prompt ${prompt.toFixed(1)} tok/s, generation ${gen.toFixed(1)} tok/s, ` +
      `running ${s.running}, waiting ${s.waiting}, KV cache ${kv.toFixed(1)}% (${s.kvTokensUsed}/${s.kvTokensTotal} tokens)`
    log(
      formatEvent(opts.logFormat ?? 'plain', 'throughput', message, {
        prompt_tokens_per_s: Math.round(prompt * 10) / 10,
        generation_tokens_per_s: Math.round(gen * 10) / 10,
        running: s.running,
        waiting: s.waiting,
        kv_cache_usage_perc: Math.round(kv * 10) / 1000,
      }),
    )
  }, every * 1000)
  timer.unref?.()
  return timer
}
