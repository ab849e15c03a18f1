/**
 * @module
 * createApp: the Hono app with every route, usable before the model has loaded. Middleware order:
 * request id -> access log (./access-log.ts) -> shutdown (503 while draining) -> CORS -> API key (all but
 * /health, /version and the chat page) -> body limit; every error, thrown
 * anywhere, leaves through one onError as the OpenAI envelope.
 */

import { timingSafeEqual } from 'node:crypto'
import { Hono, type MiddlewareHandler } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { cors } from 'hono/cors'
import { requestId } from 'hono/request-id'
import { ApiError, errorResponse, toApiError } from './errors.ts'
import { generateRoutes } from './native/generate.ts'
import { healthRoutes } from './native/health.ts'
import { metricsRoutes } from './native/metrics.ts'
import { tokenizeRoutes } from './native/tokenize.ts'
import { chatRoutes } from './openai/chat.ts'
import { completionRoutes } from './openai/completions.ts'
import { modelRoutes } from './openai/models.ts'
import { AppState, type StateOptions } from './state.ts'
import { formatRequest, RequestTracker, type LogFormat } from './access-log.ts'
import { versionRoutes } from './native/version.ts'
import { uiRoutes } from './ui/routes.ts'

export type { ServedModel } from './state.ts'

export interface AppOptions extends StateOptions {
  /** Bearer key required on every route but /health (also accepted as x-api-key). Unset: no auth. */
  apiKey?: string
  /** Allowed CORS origins ('*' for any). Unset: no CORS headers. */
  corsOrigins?: string | string[]
  /** Largest request body in bytes; default 4 MiB. */
  bodyLimitBytes?: number
  /** 'plain' (default) or 'json' lines. */
  logFormat?: LogFormat
  /** Counts requests until their last byte (startServer passes its own to drain on shutdown). */
  tracker?: RequestTracker
}

function apiKeyAuth(key: string): MiddlewareHandler {
  const want = Buffer.from(key)
  const matches = (got: string | undefined) => {
    if (got == null) return false
    const b = Buffer.from(got)
    return b.length === want.length && timingSafeEqual(b, want)
  }
  return async function apiKeyAuth(c, next) {
    if (c.req.path === '/health' || c.req.path === '/version' || (c.req.method === 'GET' && c.req.path === '/')) {
      return next()
    }
    const auth = c.req.header('authorization')
    const bearer = auth?.match(/^Bearer\s+(.+)$/i)?.[1]
    if (!matches(bearer) && !matches(c.req.header('x-api-key'))) {
      throw new ApiError(
        401,
        auth || c.req.header('x-api-key')
          ? 'Incorrect API key provided'
          : 'Missing API key: send Authorization: Bearer <key>',
        'authentication_error',
        null,
        'invalid_api_key',
        { 'www-authenticate': 'Bearer' },
      )
    }
    return next()
  }
}

/**
 * A request-controlled value made safe for a one-line log: control characters, spaces, backslashes and
 * non-ASCII are \xNN / \uNNNN escaped, so a path with %0a or %00 cannot forge a line or write a NUL.
 */
export function logSafe(v: string): string {
  return v.replace(/[^\x21-\x5b\x5d-\x7e]/g, (ch) => {
    const n = ch.charCodeAt(0)
    return n < 0x100 ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`
  })
}

/** '*' (alone or in a list) allows any origin; otherwise exactly the listed origins. */
export function corsOrigin(origins: string | string[]): string | string[] {
  const list = typeof origins === 'string' ? [origins] : origins
  return list.includes('*') ? '*' : list
}

/**
 * Builds the app. `model` may be a promise: /health answers 503 + retry-after and the other model
 * routes 503 until it resolves.
 *
 * @example
 * const app = createApp({ model: loadModel(dir), apiKey: process.env.API_KEY })
 * Bun.serve({ fetch: app.fetch, port: 8080 })
 */
export function createApp(opts: AppOptions): Hono {
  const state = new AppState(opts)
  const app = new Hono()
  app.use(requestId({ headerName: 'x-request-id' }))
  const log = opts.log
  const format = opts.logFormat ?? 'plain'
  app.use((opts.tracker ?? new RequestTracker()).middleware(log && ((rec) => log(formatRequest(rec, format)))))
  if (opts.shutdown) app.use(opts.shutdown.middleware())
  if (opts.corsOrigins) {
    app.use(cors({ origin: corsOrigin(opts.corsOrigins), exposeHeaders: ['x-request-id', 'retry-after'] }))
  }
  if (opts.apiKey) app.use(apiKeyAuth(opts.apiKey))
  const maxSize = opts.bodyLimitBytes ?? 4 * 1024 * 1024
  app.use(
    bodyLimit({
      maxSize,
      onError: () => {
        throw new ApiError(
          413,
          `request body exceeds the limit of ${maxSize} bytes`,
          'invalid_request_error',
          null,
          'request_too_large',
        )
      },
    }),
  )
  for (const routes of [
    uiRoutes,
    versionRoutes,
    healthRoutes,
    metricsRoutes,
    modelRoutes,
    chatRoutes,
    completionRoutes,
    tokenizeRoutes,
    generateRoutes,
  ]) {
    app.route('/', routes(state))
  }
  app.notFound((c) =>
    errorResponse(
      new ApiError(
        404,
        `no route for ${c.req.method} ${c.req.path}`,
        'invalid_request_error',
        null,
        'not_found',
      ),
      { 'x-request-id': c.get('requestId') ?? '' },
    ),
  )
  app.onError((err, c) => {
    const e = toApiError(err)
    // A client that hung up mid-request ends its generation as 'cancelled': not a server error.
    if (!c.req.raw.signal.aborted) state.metrics.errors.inc(1, { type: e.type })
    if (e.status >= 500 && e.status !== 503)
      opts.log?.(`${c.get('requestId')} error: ${logSafe(String(err.stack ?? err))}`)
    return errorResponse(e, { 'x-request-id': c.get('requestId') ?? '' })
  })
  return app
}
