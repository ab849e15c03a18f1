/**
 * @module
 * Response pieces shared by the OpenAI and native routes: ids, usage, timings, and what a finish
 * event means for the response (a finish reason, or an error to report).
 */

import type { GenerateEvent } from '../src/types.ts'
import { ApiError } from './errors.ts'

export type FinishEvent = Extract<GenerateEvent, { type: 'finish' }>

/** An id like OpenAI's: prefix + 24 random alphanumerics. */
export function responseId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replace(/-/g, '').slice(0, 24)}`
}

export const SYSTEM_FINGERPRINT = 'minicpm-edge'

export function usageOf(fin: FinishEvent) {
  const { promptTokens, completionTokens, cachedTokens } = fin.usage
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  }
}

/** llama.cpp-style timings plus the queue time; the engine's own measurements, in ms. */
export function timingsOf(fin: FinishEvent) {
  const t = fin.timings
  const perSecond = (n: number, ms: number) => (ms > 0 ? Math.round((n * 1e5) / ms) / 100 : null)
  return {
    queue_ms: t.queueMs,
    prompt_n: fin.usage.promptTokens,
    prompt_ms: t.prefillMs,
    prompt_per_second: perSecond(fin.usage.promptTokens, t.prefillMs),
    predicted_n: fin.usage.completionTokens,
    predicted_ms: t.decodeMs,
    predicted_per_token_ms: t.perTokenMs,
    predicted_per_second: perSecond(fin.usage.completionTokens, t.decodeMs),
    // Speculative decoding (only when drafts were verified): trees verified, drafts kept, tokens per verify.
    ...(t.specVerifies
      ? {
          spec_verifies: t.specVerifies,
          draft_n_accepted: t.specAccepted ?? 0,
          mean_accept_length: Math.round((t.meanAcceptLength ?? 0) * 1000) / 1000,
        }
      : {}),
    // Share of forward time in attention (dense or InfLLM v2 sparse), engine-wide while the request ran.
    attention_share: t.attentionShare === undefined ? null : Math.round(t.attentionShare * 1e4) / 1e4,
  }
}

/**
 * The OpenAI finish_reason for a finish event, or a throw for the two that are not one: an engine
 * error (500) and a cancel nobody asked for (503, e.g. the server shutting down). A cancel the
 * client caused is never reported: there is nobody left to read it.
 */
export function finishReasonOf(fin: FinishEvent): 'stop' | 'length' {
  if (fin.reason === 'error') {
    throw new ApiError(
      500,
      `generation failed: ${fin.error ?? 'engine error'}`,
      'server_error',
      null,
      'engine_error',
    )
  }
  if (fin.reason === 'cancelled') {
    throw new ApiError(
      503,
      'the request was cancelled by the server',
      'unavailable_error',
      null,
      'cancelled',
    )
  }
  return fin.reason
}

/** `{length_cause}` when a length finish has a cause (kv_cache: cut by the shared KV pool, not by a limit). */
export function lengthCauseOf(fin: FinishEvent): { length_cause?: string } {
  return fin.reason === 'length' && fin.lengthCause ? { length_cause: fin.lengthCause } : {}
}
