/**
 * @module
 * GET /version (as vLLM serves it): the program's version, the Bun it runs on, and, once loaded, the model
 * and the engine's backend. Public like /health.
 */

import { Hono } from 'hono'
import { versionInfo } from '../../src/version.ts'
import type { AppState } from '../state.ts'

/** Registers GET /version on a sub-app. */
export function versionRoutes(state: AppState): Hono {
  const app = new Hono()
  app.get('/version', (c) => {
    const info = state.model?.info
    return c.json({
      ...versionInfo(),
      model: info ? { id: info.id, random_weights: info.randomWeights, backend: info.backendName } : null,
    })
  })
  return app
}
