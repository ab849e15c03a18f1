/**
 * @module
 * The OpenAI error envelope `{"error":{"message","type","param","code"}}` and the one mapping from any
 * thrown value (our own ApiError, a NativeError from the engine, a bug) to an HTTP status.
 */

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'unavailable_error'

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null }
}

/** An error that already knows its HTTP status and envelope fields. */
export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 404 | 413 | 429 | 500 | 503,
    message: string,
    readonly type: ErrorType = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }
  }
}

/** 400 invalid_request_error; `param` names the offending field. */
export const badRequest = (
  message: string,
  param: string | null = null,
  code: string | null = null,
) => new ApiError(400, message, 'invalid_request_error', param, code)

/** 400 for a field this server cannot honour (never silently ignored). */
export const unsupported = (param: string, message: string) =>
  new ApiError(400, message, 'invalid_request_error', param, 'unsupported_parameter')

/** 503 with retry-after, while the model loads or when the server is shutting down. */
export const unavailable = (message: string, retryAfterS = 1) =>
  new ApiError(503, message, 'unavailable_error', null, 'unavailable', {
    'retry-after': String(retryAfterS),
  })

/** 429 with retry-after when the wait queue is full. */
export const overloaded = (message: string, retryAfterS = 1) =>
  new ApiError(429, message, 'rate_limit_error', null, 'queue_full', {
    'retry-after': String(retryAfterS),
  })

/** Duck-typed so that routes need not load the native library just to recognise its errors. */
function nativeStatusName(err: unknown): string | null {
  if (!(err instanceof Error)) return null
  const name = (err as { statusName?: unknown }).statusName
  return typeof name === 'string' ? name : null
}

/** The request field a runtime error names (e.g. BudgetTooSmallError: max_tokens), if any. */
function paramOf(err: unknown): string | null {
  const p = (err as { param?: unknown }).param
  return typeof p === 'string' ? p : null
}

/**
 * Maps any thrown value to an ApiError. Engine statuses that mean "your request" become 4xx,
 * a full queue becomes 429, everything else is a 500 whose message is kept (it helps the user).
 */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err
  const message = err instanceof Error ? err.message : String(err)
  switch (nativeStatusName(err)) {
    case 'queue_full':
      return overloaded(`the engine's wait queue is full, retry later (${message})`)
    case 'too_large':
      return badRequest(message, null, 'context_length_exceeded')
    case 'invalid_argument':
      return badRequest(message, paramOf(err))
    case 'unsupported':
      return badRequest(message, null, 'unsupported_parameter')
  }
  return new ApiError(500, message || 'internal error', 'server_error', null, 'internal_error')
}

/** The Response for an ApiError, with its extra headers. */
export function errorResponse(e: ApiError, headers: Record<string, string> = {}): Response {
  return Response.json(e.body(), { status: e.status, headers: { ...e.headers, ...headers } })
}
