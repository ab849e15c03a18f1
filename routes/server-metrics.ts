/**
 * @module
 * The server's Prometheus series. Names follow vLLM's (`num_requests_running`, `kv_cache_usage_perc`,
 * `time_to_first_token_seconds`, ...) under a `minicpm:` prefix so existing dashboards map over.
 * Engine state (running, waiting, KV) is read at scrape time; per-request series are fed by
 * startGeneration.
 */

import { Registry } from './prometheus.ts'
import type { EngineStats } from '../src/types.ts'

const LATENCY_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
]
const TOKEN_LATENCY_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
  0.5, 0.75, 1, 2.5,
]

export type ServerMetrics = ReturnType<typeof createServerMetrics>

/** The numeric stats: what a gauge can read. */
type CountKey = { [K in keyof EngineStats]: EngineStats[K] extends number ? K : never }[keyof EngineStats]

interface StatsSource {
  model: { stats(): EngineStats } | null
  inFlight: number
}

/** Registers every series; `source` gives the engine stats (absent while the model loads). */
export function createServerMetrics(source: StatsSource) {
  const r = new Registry()
  const stat = (k: CountKey) => () => source.model?.stats()[k] ?? 0
  r.gauge(
    'minicpm:num_requests_running',
    'Requests decoding or prefilling in the engine.',
    stat('running'),
  )
  r.gauge(
    'minicpm:num_requests_waiting',
    'Requests queued in the engine, not yet admitted.',
    stat('waiting'),
  )
  r.gauge(
    'minicpm:http_requests_in_flight',
    'Generations the HTTP server has in flight.',
    () => source.inFlight,
  )
  r.gauge('minicpm:kv_cache_usage_perc', 'Fraction of the KV cache budget in use (0..1).', () => {
    const s = source.model?.stats()
    return s && s.kvTokensTotal > 0 ? s.kvTokensUsed / s.kvTokensTotal : 0
  })
  r.gauge('minicpm:kv_cache_tokens_used', 'KV cache slots in use, in tokens.', stat('kvTokensUsed'))
  r.gauge('minicpm:kv_cache_tokens_total', 'KV cache budget, in tokens.', stat('kvTokensTotal'))
  r.gauge('minicpm:engine_steps', 'Engine scheduler steps since start (monotonic).', stat('steps'))
  r.gauge(
    'minicpm:spec_decode_num_verifies',
    'Speculative decoding: draft trees verified since start (monotonic).',
    stat('specVerifies'),
  )
  r.gauge(
    'minicpm:spec_decode_num_draft_tokens',
    'Speculative decoding: draft tree nodes verified since start (monotonic).',
    stat('specDrafted'),
  )
  r.gauge(
    'minicpm:spec_decode_num_accepted_tokens',
    'Speculative decoding: drafts kept since start (monotonic).',
    stat('specAccepted'),
  )
  r.gauge(
    'minicpm:spec_decode_mean_accept_length',
    'Speculative decoding: tokens emitted per verify (1 + kept / verifies; 0 before the first).',
    stat('specMeanAcceptLength'),
  )
  r.gaugeSeries(
    'minicpm:spec_decode_depth_acceptance',
    'Speculative decoding: share of verifies that kept at least `depth` drafts.',
    () => (source.model?.stats().specDepthAcceptance ?? []).map((v, d) => [{ depth: String(d + 1) }, v]),
  )
  return {
    registry: r,
    promptTokens: r.counter('minicpm:prompt_tokens_total', 'Prompt tokens of finished requests.'),
    generationTokens: r.counter(
      'minicpm:generation_tokens_total',
      'Generated tokens streamed out.',
    ),
    finished: r.counter('minicpm:request_success_total', 'Finished requests by finished_reason.'),
    errors: r.counter('minicpm:errors_total', 'Error responses and mid-stream errors by type.'),
    ttft: r.histogram(
      'minicpm:time_to_first_token_seconds',
      'Time from submit to the first generated token.',
      LATENCY_BUCKETS,
    ),
    itl: r.histogram(
      'minicpm:inter_token_latency_seconds',
      'Time between consecutive generated tokens.',
      TOKEN_LATENCY_BUCKETS,
    ),
    e2e: r.histogram(
      'minicpm:e2e_request_latency_seconds',
      'Time from submit to the finish event.',
      LATENCY_BUCKETS,
    ),
    queueTime: r.histogram(
      'minicpm:request_queue_time_seconds',
      'Time a request waited before the engine admitted it.',
      LATENCY_BUCKETS,
    ),
  }
}
