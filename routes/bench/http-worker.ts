/**
 * @module
 * The HTTP side of the benchmark, run in a Worker so that client-side SSE parsing does not share the
 * server's event loop: `concurrency` SSE streams from POST /generate plus /health probes until they end.
 */

declare const self: Worker

export interface WorkerJob {
  url: string
  concurrency: number
  prompt: string
  maxTokens: number
}

export interface StreamStat {
  ttftMs: number
  tokens: number
}

export interface WorkerResult {
  wallS: number
  streams: StreamStat[]
  healthMs: number[]
}

async function streamOnce(job: WorkerJob, i: number): Promise<StreamStat> {
  const t0 = performance.now()
  const r = await fetch(`${job.url}/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: `${job.prompt} #${i}`,
      max_tokens: job.maxTokens,
      ignore_eos: true,
      temperature: 0,
    }),
  })
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`)
  const dec = new TextDecoder()
  let buf = ''
  let ttftMs = NaN
  let tokens = 0
  for await (const chunk of r.body!) {
    buf += dec.decode(chunk, { stream: true })
    let end: number
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, end)
      buf = buf.slice(end + 2)
      if (!frame.startsWith('data: ')) continue
      const ev = JSON.parse(frame.slice(6)) as { type: string; token_ids?: number[] }
      if (ev.type === 'delta' && ev.token_ids!.length > 0) {
        if (tokens === 0) ttftMs = performance.now() - t0
        tokens += ev.token_ids!.length
      }
    }
  }
  return { ttftMs, tokens }
}

self.onmessage = async (e: MessageEvent<WorkerJob>) => {
  const job = e.data
  const healthMs: number[] = []
  let running = true
  const prober = (async () => {
    while (running) {
      const t0 = performance.now()
      await fetch(`${job.url}/health`).then((r) => r.arrayBuffer())
      healthMs.push(performance.now() - t0)
      await Bun.sleep(5)
    }
  })()
  const t0 = performance.now()
  const streams = await Promise.all(
    Array.from({ length: job.concurrency }, (_, i) => streamOnce(job, i)),
  )
  const wallS = (performance.now() - t0) / 1000
  running = false
  await prober
  self.postMessage({ wallS, streams, healthMs } satisfies WorkerResult)
}
