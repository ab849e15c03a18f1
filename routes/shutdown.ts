/**
 * @module
 * Graceful shutdown, shared by the server and the routes: while draining, new requests get 503 +
 * retry-after (and /health says so, so load balancers stop sending); when the drain period is over,
 * `cancelAll()` ends the generations still running, whose streams then close with an error frame
 * (`code: "server_shutdown"`) and, on SSE, `data: [DONE]`.
 */

import type { MiddlewareHandler } from 'hono'
import { ApiError, unavailable } from './errors.ts'

export class Shutdown {
  draining = false
  private readonly ac = new AbortController()

  /** Aborted when in-flight generations must stop. */
  get signal(): AbortSignal {
    return this.ac.signal
  }

  cancelAll(): void {
    this.ac.abort()
  }

  /** Refuses new requests while draining. */
  middleware(): MiddlewareHandler {
    return async (_c, next) => {
      if (this.draining) throw unavailable('the server is shutting down', 5)
      return next()
    }
  }
}

/** What a generation cut by the shutdown ends with (503; SSE streams add `data: [DONE]` after it). */
export function shutdownError(): ApiError {
  return new ApiError(
    503,
    'the server is shutting down; the reply was cut short, retry the request',
    'unavailable_error',
    null,
    'server_shutdown',
  )
}
