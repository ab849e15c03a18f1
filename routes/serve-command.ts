/**
 * The CLI's `serve` command: the OpenAI-compatible + native HTTP server (./server.ts) until SIGINT / SIGTERM.
 * It lives here, not in src/cli/, because src/ never imports the HTTP layer.
 */
import { kvSummary, loadOptionsOf, modelHelp, modelOptions, num, parse, type Command } from '../src/cli/common.ts'
import { startServer } from './server.ts'

const options = {
  ...modelOptions,
  host: { type: 'string' },
  port: { type: 'string', short: 'p' },
  'api-key': { type: 'string' },
  cors: { type: 'string', multiple: true },
  'served-model-name': { type: 'string' },
  'max-in-flight': { type: 'string' },
  'max-connections': { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
} as const

export const serve: Command = {
  name: 'serve',
  summary: 'serve the model over HTTP (OpenAI-compatible + native streaming)',
  usage: `Usage: minicpm-edge serve [flags]

      --host HOST              bind address (default 127.0.0.1)
  -p, --port N                 port (default 8080; 0 = any free port)
      --api-key KEY            require 'Authorization: Bearer KEY' (default: $MINICPM_API_KEY, else no auth)
      --cors ORIGIN            allow a browser origin ('*' for any; repeatable)
      --served-model-name ID   extra model id accepted in requests and listed by /v1/models
      --max-in-flight N        generations running + waiting before 429 (default 128)
      --max-connections N      requests open at once (bodies being read, streams) before 503 (default 1024)
  -q, --quiet                  no access log

${modelHelp}`,

  async run(argv) {
    const { values } = parse(argv, options)
    const { dir, ...load } = loadOptionsOf(values)
    const server = await startServer({
      modelDir: dir,
      load,
      host: values.host,
      port: num(values, 'port', { int: true, min: 0 }),
      apiKey: values['api-key'] ?? process.env.MINICPM_API_KEY,
      corsOrigins: values.cors,
      servedModelName: values['served-model-name'],
      maxInFlight: num(values, 'max-in-flight', { int: true, min: 1 }),
      maxConnections: num(values, 'max-connections', { int: true, min: 1 }),
      log: values.quiet ? undefined : (line) => process.stderr.write(line + '\n'),
    })
    process.stderr.write(`listening on ${server.url} (the model is loading; /health says when it is ready)\n`)
    const stopped = new Promise<number>((resolve) => {
      const stop = () => server.stop().then(() => resolve(0))
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
    })
    try {
      const model = await server.model
      process.stderr.write(`ready: ${model.info.id} (${server.url}/v1; ${kvSummary(model)})\n`)
    } catch (e) {
      await server.stop()
      throw e
    }
    return stopped
  },
}
