/**
 * The CLI's `serve` command: the OpenAI-compatible + native HTTP server (./server.ts) until SIGINT / SIGTERM,
 * which drain: new requests get 503, those in flight have --shutdown-timeout seconds to finish, then the rest
 * end with an error frame (and [DONE]); a second signal cuts the wait short.
 * It lives here, not in src/cli/, because src/ never imports the HTTP layer.
 */
import {
  kvSummary,
  loadOptionsOf,
  modelHelp,
  modelOptions,
  num,
  parse,
  UsageError,
  type Command,
} from '../src/cli/common.ts'
import { stderrLine } from '../src/cli/term.ts'
import { formatEvent, LOG_FORMATS, type LogFormat } from './access-log.ts'
import { startServer } from './server.ts'

const options = {
  ...modelOptions,
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string' },
  cors: { type: 'string', multiple: true },
  'served-model-name': { type: 'string' },
  'max-in-flight': { type: 'string' },
  'max-connections': { type: 'string' },
  'log-format': { type: 'string' },
  'stats-interval': { type: 'string' },
  'shutdown-timeout': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
} as const

const HINTS = {
  '-p': "serve has no -p (in 'generate' it is the prompt); the port is --port N or MINICPM_PORT",
}

export const serve: Command = {
  name: 'serve',
  summary: 'serve the model over HTTP (OpenAI-compatible, native streaming, chat page at /)',
  usage: `Usage: minicpm-edge serve [flags]

Serves /v1/chat/completions, /v1/completions, /v1/models, /generate, /tokenize, /health, /version, /metrics,
and a chat page at / (open the URL in a browser).

      --host HOST              bind address (default: $MINICPM_HOST, else 127.0.0.1; 0.0.0.0 = all interfaces)
      --port N                 port (default: $MINICPM_PORT, else 8080; 0 = any free port)
      --api-key KEY            require 'Authorization: Bearer KEY' (default: $MINICPM_API_KEY, else no auth)
      --cors ORIGIN            allow a browser origin ('*' for any; repeatable)
      --served-model-name ID   extra model id accepted in requests and listed by /v1/models
      --max-in-flight N        generations running + waiting before 429 (default 128)
      --max-connections N      requests open at once (bodies being read, streams) before 503 (default 1024)
      --log-format F           access log lines: plain (default) or json ($MINICPM_LOG_FORMAT)
      --stats-interval S       while busy, a throughput line every S seconds (default 10; 0 = off)
      --shutdown-timeout S     on SIGINT/SIGTERM, seconds requests in flight may take to finish before they
                               are cut with an error (default 10; a second signal cuts at once)
  -q, --quiet                  no access log and no throughput lines

${modelHelp}`,

  async run(argv) {
    const { values } = parse(argv, options, false, HINTS)
    const format = (values['log-format'] ?? process.env.MINICPM_LOG_FORMAT ?? 'plain') as LogFormat
    if (!LOG_FORMATS.includes(format)) {
      throw new UsageError(`--log-format must be one of ${LOG_FORMATS.join(', ')}, got '${format}'`)
    }
    const port = num({ port: values.port ?? process.env.MINICPM_PORT }, 'port', { int: true, min: 0 })
    if (port !== undefined && port > 65535) throw new UsageError(`--port must be <= 65535, got ${port}`)
    const { dir, ...load } = loadOptionsOf(values)
    const say = (message: string, fields: Record<string, unknown> = {}) =>
      stderrLine.line(formatEvent(format, 'message', message, fields))
    const drainS = num(values, 'shutdown-timeout', { min: 0 }) ?? 10
    const server = await startServer({
      modelDir: dir,
      load,
      host: values.host ?? (process.env.MINICPM_HOST || undefined),
      port,
      apiKey: values['api-key'] ?? process.env.MINICPM_API_KEY,
      corsOrigins: values.cors,
      servedModelName: values['served-model-name'],
      maxInFlight: num(values, 'max-in-flight', { int: true, min: 1 }),
      maxConnections: num(values, 'max-connections', { int: true, min: 1 }),
      quiet: values.quiet,
      log: (line) => stderrLine.line(line),
      logFormat: format,
      statsIntervalS: num(values, 'stats-interval', { min: 0 }) ?? 10,
      shutdownTimeoutS: drainS,
    })
    say(`listening on ${server.url} (the model is loading; /health says when it is ready)`, { url: server.url })
    const stopped = new Promise<number>((resolve) => {
      const now = new AbortController()
      let first = 0
      const onSignal = (sig: NodeJS.Signals) => {
        if (first === 0) {
          first = performance.now()
          const open = server.open
          say(
            open > 0
              ? `${sig}: shutting down; waiting up to ${drainS}s for ${open} request(s) in flight (send it again to stop now)`
              : `${sig}: shutting down`,
            { signal: sig, in_flight: open },
          )
          void server.stop({ drainS, now: now.signal }).then(() => {
            say('stopped')
            resolve(0)
          })
        } else if (performance.now() - first > 500) {
          // npm forwards the terminal's Ctrl-C as a second SIGINT at once: only a later one means "now".
          say(`${sig} again: cutting the requests still in flight`)
          now.abort()
        }
      }
      process.on('SIGINT', onSignal)
      process.on('SIGTERM', onSignal)
    })
    try {
      const model = await server.model
      say(`ready: ${model.info.id} (${server.url}/v1, chat page ${server.url}/; ${kvSummary(model)})`, {
        model: model.info.id,
      })
    } catch (e) {
      await server.stop({ drainS: 0 })
      throw e
    }
    return stopped
  },
}
