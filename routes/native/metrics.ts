/**
 * @module
 * GET /metrics: Prometheus text format (engine gauges read at scrape time, request counters and
 * latency histograms fed by the generation routes). Answers while the model loads, with zeros.
 */

import { Hono } from 'hono'
import type { AppState } from '../state.ts'

/** Registers GET /metrics on a sub-app. */
export function metricsRoutes(state: AppState): Hono {
  const app = new Hono()
  app.get('/metrics', (c) =>
    c.body(state.metrics.registry.render(), 200, {
      'content-type': 'text/plain; version=0.0.4; charset=utf-8',
    }),
  )
  return app
}
