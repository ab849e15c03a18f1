/**
 * `health`: exit 0 when a server's /health answers 200, else 1. For container HEALTHCHECKs on images without
 * curl: `minicpm-edge health` checks http://127.0.0.1:$MINICPM_PORT (default 8080).
 */
import { parse, type Command } from './common'

const options = { url: { type: 'string' } } as const

export const healthCommand: Command = {
  name: 'health',
  summary: "check a running server's /health (exit 0 when ready)",
  usage: `Usage: minicpm-edge health [--url URL]

      --url URL            the server (default http://127.0.0.1:$MINICPM_PORT, port 8080 when unset)`,

  async run(argv) {
    const { values } = parse(argv, options)
    const base = values.url ?? `http://127.0.0.1:${process.env.MINICPM_PORT || 8080}`
    const res = await fetch(`${base.replace(/\/+$/, '')}/health`, { signal: AbortSignal.timeout(5000) })
    const body = await res.text()
    if (res.ok) return 0
    throw new Error(`${base}/health answered ${res.status}: ${body.slice(0, 200)}`)
  },
}
