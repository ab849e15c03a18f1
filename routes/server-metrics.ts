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
  model: { stats(): EngineStats; info: { id: string; kvDtype: string } } | null
  inFlight: number
  connections?: () => { open: number; requests: number }
  /** The model_name label of the vllm:* series (the served model name); default the model id. */
  servedName?: () => string | undefined
}

/** The process start, in seconds since the epoch: vllm:lora_requests_info's value. */
const STARTED_S = Math.floor(Date.now() / 1000)

/** Tokens per KV block (MINICPM_KV_BLOCK_SIZE): vllm:cache_config_info's block_size. */
export const KV_BLOCK_SIZE = 64

/** Registers every series; `source` gives the engine stats (absent while the model loads). */
export function createServerMetrics(raw: StatsSource) {
  const r = new Registry()
  // One engine snapshot per scrape: the engine runs on, and the series of one scrape must agree.
  let memo: EngineStats | null = null
  r.onScrape = () => {
    memo = null
  }
  const snapshot = (m: NonNullable<StatsSource['model']>): EngineStats => (memo ??= m.stats())
  const source: StatsSource = {
    get model() {
      const m = raw.model
      return m && { info: m.info, stats: () => snapshot(m) }
    },
    get inFlight() {
      return raw.inFlight
    },
    connections: raw.connections,
    servedName: raw.servedName,
  }
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
  r.gauge(
    'minicpm:http_connections_open',
    'TCP connections open to the server (accepted, any state).',
    () => source.connections?.().open ?? 0,
  )
  r.gauge(
    'minicpm:http_requests_open',
    'HTTP requests the server has open (incl. bodies still being read and streams).',
    () => source.connections?.().requests ?? 0,
  )
  r.gauge('minicpm:kv_cache_usage_perc', 'Fraction of the KV cache budget in use (0..1).', () => {
    const s = source.model?.stats()
    return s && s.kvTokensTotal > 0 ? s.kvTokensUsed / s.kvTokensTotal : 0
  })
  r.gauge('minicpm:kv_cache_tokens_used', 'KV cache slots in use, in tokens.', stat('kvTokensUsed'))
  r.gauge('minicpm:kv_cache_tokens_total', 'KV cache budget, in tokens.', stat('kvTokensTotal'))
  r.gauge('minicpm:engine_steps', 'Engine scheduler steps since start (monotonic).', stat('steps'))
  r.gauge(
    'minicpm:kv_cache_tokens_cached',
    'KV slots held only by the prefix cache (idle, reusable, evicted LRU first; not in kv_cache_tokens_used).',
    stat('kvTokensCached'),
  )
  r.gauge('minicpm:prefix_cache_enabled', '1 when the prefix cache is on.', stat('prefixCache'))
  const counter = (name: string, help: string, k: CountKey) =>
    r.collected(name, help, 'counter', () => [{ value: source.model?.stats()[k] ?? 0 }])
  counter(
    'minicpm:prefix_cache_queries_total',
    'Prompt tokens looked up in the prefix cache.',
    'prefixQueryTokens',
  )
  counter('minicpm:prefix_cache_hits_total', 'Prompt tokens found in the prefix cache.', 'prefixHitTokens')
  counter(
    'minicpm:prefix_cache_evictions_total',
    'Idle cached KV blocks (64 tokens) evicted to make room.',
    'prefixEvictions',
  )
  registerRouterSeries(r, source)
  r.info(
    'minicpm:backend_info',
    'The backend and CPU kernel family the engine runs (MINICPM_KERNELS forces one), e.g. "cpu avx512+amx".',
    () => {
      const s = source.model?.stats()
      return s ? { backend: s.backendName } : null
    },
  )
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
    stalled: r.counter(
      'minicpm:streams_stalled_total',
      'Streams cancelled because the client read nothing for the stall timeout.',
    ),
    refused: r.counter(
      'minicpm:http_connections_refused_total',
      'Requests refused with 503 because the server had too many open.',
    ),
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

/**
 * The names fleet routers read with no configuration: the Gateway API Inference Extension / llm-d endpoint
 * picker (num_requests_waiting/running, kv_cache_usage_perc, cache_config_info, lora_requests_info) and vLLM's
 * production-stack router (num_requests_running/waiting, gpu_cache_usage_perc, gpu_prefix_cache_hit_rate and its
 * counters), as read from their source (tests/fixtures/router-metrics.ts). Same values as the minicpm:* series,
 * with vLLM's model_name label.
 */
function registerRouterSeries(r: Registry, source: StatsSource): void {
  const series = (value: (s: EngineStats) => number, extra: Record<string, string> = {}) => () => {
    const m = source.model
    if (!m) return []
    return [{ labels: { model_name: source.servedName?.() ?? m.info.id, ...extra }, value: value(m.stats()) }]
  }
  const usage = (s: EngineStats) => (s.kvTokensTotal > 0 ? s.kvTokensUsed / s.kvTokensTotal : 0)
  r.collected(
    'vllm:num_requests_running',
    'Requests in the engine batch (prefilling or decoding).',
    'gauge',
    series((s) => s.running),
  )
  r.collected(
    'vllm:num_requests_waiting',
    'Requests queued, not yet admitted.',
    'gauge',
    series((s) => s.waiting),
  )
  r.collected(
    'vllm:kv_cache_usage_perc',
    'KV-cache usage: fraction of KV blocks held by requests (0..1; idle cached blocks count as free).',
    'gauge',
    series(usage),
  )
  r.collected(
    'vllm:gpu_cache_usage_perc',
    'Same as vllm:kv_cache_usage_perc (the name older routers read).',
    'gauge',
    series(usage),
  )
  r.collected('vllm:cache_config_info', 'Information of the KV cache configuration.', 'gauge', () => {
    const m = source.model
    if (!m) return []
    const s = m.stats()
    const labels = {
      model_name: source.servedName?.() ?? m.info.id,
      block_size: String(KV_BLOCK_SIZE),
      num_gpu_blocks: String(Math.floor(s.kvTokensTotal / KV_BLOCK_SIZE)),
      cache_dtype: m.info.kvDtype,
      enable_prefix_caching: s.prefixCache ? 'True' : 'False',
    }
    return [{ labels, value: 1 }]
  })
  r.collected(
    'vllm:prefix_cache_queries_total',
    'Prompt tokens looked up in the prefix cache.',
    'counter',
    series((s) => s.prefixQueryTokens),
  )
  r.collected(
    'vllm:prefix_cache_hits_total',
    'Prompt tokens found in the prefix cache.',
    'counter',
    series((s) => s.prefixHitTokens),
  )
  // production-stack's router reads the pre-v1 counter names (tests/fixtures/router-metrics.ts).
  r.collected(
    'vllm:gpu_prefix_cache_queries_total',
    'Same as vllm:prefix_cache_queries_total (the name the production-stack router reads).',
    'counter',
    series((s) => s.prefixQueryTokens),
  )
  r.collected(
    'vllm:gpu_prefix_cache_hits_total',
    'Same as vllm:prefix_cache_hits_total (the name the production-stack router reads).',
    'counter',
    series((s) => s.prefixHitTokens),
  )
  // The endpoint picker's default vLLM config reads LoRA state from this family and counts its absence as an
  // error on every poll; no adapters here, so one series whose value is the server start time (as vLLM's).
  r.collected('vllm:lora_requests_info', 'Running stats on LoRA requests (no adapters are served).', 'gauge', () =>
    source.model ? [{ labels: { max_lora: '0', running_lora_adapters: '', waiting_lora_adapters: '' }, value: STARTED_S }] : [],
  )
  r.collected(
    'vllm:gpu_prefix_cache_hit_rate',
    'Prefix cache hit rate since start: hit tokens / queried tokens (0..1).',
    'gauge',
    series((s) => (s.prefixQueryTokens > 0 ? s.prefixHitTokens / s.prefixQueryTokens : 0)),
  )
}
