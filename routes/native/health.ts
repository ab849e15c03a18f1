/**
 * @module
 * GET /health: 503 + retry-after while the model loads (llama.cpp's body), then 200 {"status":"ok"}.
 * It reads no engine state, so it answers at once however busy the engine is.
 */

import { Hono } from 'hono'
import type { AppState } from '../state.ts'

/** Registers GET /health on a sub-app. */
export function healthRoutes(state: AppState): Hono {
  const app = new Hono()
  app.get('/health', (c) => {
    if (state.model) return c.json({ status: 'ok' })
    const message = state.loadError
      ? `Model failed to load: ${state.loadError.message}`
      : 'Loading model'
    c.header('retry-after', '2')
    return c.json({ error: { code: 503, message, type: 'unavailable_error' } }, 503)
  })
  return app
}
