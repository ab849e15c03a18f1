/**
 * @module
 * startServer: Bun.serve over createApp. Listens at once (health answers 503 while the model loads),
 * binds 127.0.0.1 unless told otherwise, and lifts Bun's idle timeout for generation requests, whose
 * streams may sit silent through a long prefill (pings cover the client side).
 */

import { createApp, type AppOptions, type ServedModel } from './app.ts'
import type { LoadOptions } from '../src/runtime/load.ts'

export interface ServerOptions extends Omit<AppOptions, 'model' | 'onLongRequest'> {
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
}

export interface RunningServer {
  url: string
  port: number
  /** The model once loaded (rejects if loading failed). */
  model: Promise<ServedModel>
  /** Stops listening, ends open connections, and disposes the model if this server loaded it. */
  stop(): Promise<void>
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
  const app = createApp({
    log: opts.quiet ? undefined : (line) => process.stderr.write(`${line}\n`),
    ...opts,
    model,
    onLongRequest: (req) => server?.timeout(req, 0),
  })
  server = Bun.serve({
    hostname: opts.host ?? '127.0.0.1',
    port: opts.port ?? 8080,
    idleTimeout: opts.idleTimeoutS ?? 120,
    fetch: (req, srv) => app.fetch(req, srv),
  })
  const hostname = server.hostname ?? opts.host ?? '127.0.0.1'
  const host = hostname.includes(':') ? `[${hostname}]` : hostname
  const url = `http://${host}:${server.port}`
  let stopped = false
  return {
    url,
    port: server.port!,
    model,
    async stop() {
      if (stopped) return
      stopped = true
      await server!.stop(true)
      if (ownsModel) {
        const m = (await model.catch(() => null)) as (ServedModel & { dispose?: () => void }) | null
        m?.dispose?.()
      }
    },
  }
}
