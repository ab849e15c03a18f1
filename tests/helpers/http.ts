/**
 * Small HTTP test helpers shared by the route, server and load suites: JSON posts against a Hono app
 * or a URL, and an SSE body split into its frames.
 */
import type { Hono } from 'hono'

/** POST a JSON body (a string is sent as is, for malformed-JSON cases) to an in-process app. */
export function postApp(
  app: Hono,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
) {
  return app.request(path, {
    method: 'POST',
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers },
    signal,
  })
}

export interface SseFrames {
  /** Parsed `data:` payloads, in order ('[DONE]' kept as the string). */
  data: unknown[]
  /** Comment lines (`: ping`) without the colon and space. */
  comments: string[]
}

/** Splits an SSE body into frames; throws on a frame that is neither data nor comment. */
export function parseSse(text: string): SseFrames {
  const out: SseFrames = { data: [], comments: [] }
  for (const frame of text.split('\n\n')) {
    if (frame === '') continue
    if (frame.startsWith(': ')) out.comments.push(frame.slice(2))
    else if (frame.startsWith('data: ')) {
      const payload = frame.slice(6)
      out.data.push(payload === '[DONE]' ? payload : JSON.parse(payload))
    } else throw new Error(`unexpected SSE frame: ${JSON.stringify(frame)}`)
  }
  return out
}

/** Renders objects the way the server must write them, for exact-frame comparisons. */
export const sseText = (frames: unknown[]) =>
  frames.map((f) => `data: ${typeof f === 'string' ? f : JSON.stringify(f)}\n\n`).join('')

/** Resolves when `check()` is true, polling every 10 ms; rejects after `ms`. */
export async function waitFor(check: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const t0 = performance.now()
  while (!check()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await Bun.sleep(10)
  }
}

/** A response body as JSON, typed loosely for assertions (Bun types `Response.json()` as unknown). */
export const readJson = (r: Response | Promise<Response>): Promise<any> =>
  Promise.resolve(r).then((x) => x.json())
