/**
 * generate(): one request through the engine as an async stream of GenerateEvents.
 *
 * submit -> wait for the doorbell (or poll) -> drain -> detokenize the new tokens incrementally -> cut stop
 * strings -> yield. Abort of req.signal, a stop string, or the consumer leaving the loop cancels the request
 * in the engine; its finish event is always drained so that the engine releases the id.
 */
import { NativeError, type NativeEngine, type NativeEvent, type NativeSampling } from '../../ffi/index'
import { StopMatcher, StreamDecoder } from '../text/index'
import type { Tokenizer } from '../tokenizer/index'
import type { FinishReason, GenerateEvent, GenerateRequest, SamplingOptions, TokenLogprob } from '../types'
import { Timeline } from './timeline'

/** While no token has come yet, request info is read this often to report prefill progress (default). */
export const PREFILL_TICK_MS = 100

/**
 * When enabled (the bench command), the CPU time of the JS thread spent turning drained events into deltas:
 * thread CPU time, so that other busy processes do not inflate it the way wall time would be.
 */
export const generateProfile = { enabled: false, cpuUs: 0, tokens: 0 }

const threadCpuUs = (): number => {
  const u = process.threadCpuUsage()
  return u.user + u.system
}

export interface GenerateDeps {
  engine: NativeEngine
  tokenizer: Tokenizer
  render: (req: GenerateRequest) => string // chat template (throws when the model has none)
  defaults: SamplingOptions
  nVocab: number
  prefillTickMs: number
}

export function promptTokens(deps: GenerateDeps, req: GenerateRequest): number[] {
  const addSpecialTokens = req.addSpecialTokens ?? true
  if (req.messages !== undefined) {
    if (req.prompt !== undefined) throw new TypeError('generate: give either prompt or messages, not both')
    return deps.tokenizer.encode(deps.render(req), { addSpecialTokens })
  }
  if (typeof req.prompt === 'string') return deps.tokenizer.encode(req.prompt, { addSpecialTokens })
  if (Array.isArray(req.prompt)) return req.prompt
  throw new TypeError('generate: a prompt (text or token ids) or messages is required')
}

function samplingOf(req: GenerateRequest, defaults: SamplingOptions): NativeSampling {
  const pick = <K extends keyof SamplingOptions>(k: K) => (req[k] !== undefined ? req[k] : defaults[k])
  return {
    temperature: pick('temperature'),
    topP: pick('topP'),
    topK: pick('topK'),
    minP: pick('minP'),
    repetitionPenalty: pick('repetitionPenalty'),
    presencePenalty: pick('presencePenalty'),
    frequencyPenalty: pick('frequencyPenalty'),
    penaltyLastN: pick('penaltyLastN'),
    seed: pick('seed') ?? Math.floor(Math.random() * 2 ** 32),
    maxTokens: pick('maxTokens'),
    ignoreEos: pick('ignoreEos'),
    logprobs: req.logprobs || (req.topLogprobs ?? 0) > 0,
    topLogprobs: req.topLogprobs,
  }
}

/** The request's events; throws (before any event) on a bad request or a submit the engine refuses. */
export async function* generate(deps: GenerateDeps, req: GenerateRequest): AsyncGenerator<GenerateEvent> {
  const { engine, tokenizer } = deps
  const ids = promptTokens(deps, req)
  const sampling = samplingOf(req, deps.defaults)
  const signal = req.signal
  if (signal?.aborted) {
    yield {
      type: 'finish',
      reason: 'cancelled',
      usage: { promptTokens: ids.length, completionTokens: 0 },
      timings: Timeline.empty(),
    }
    return
  }
  // The engine stops on config.json's EOS ids; the tokenizer may know more (e.g. <|im_end|> from tokenizer_config),
  // which a small test vocabulary may not contain.
  const eosIds = sampling.ignoreEos ? [] : tokenizer.eosIds.filter((t) => t < deps.nVocab)
  const stopIds = [...(req.stopTokenIds ?? []), ...eosIds]
  const id = engine.submit(ids, sampling, { stopIds, logitBias: req.logitBias })
  const stats0 = engine.stats()

  let ready = false
  let wake: (() => void) | null = null
  engine.onReady(id, () => {
    ready = true
    wake?.()
  })
  const sleep = (ms: number | null) =>
    new Promise<void>((resolve) => {
      const timer = ms === null ? null : setTimeout(resolve, ms)
      wake = () => {
        if (timer) clearTimeout(timer)
        resolve()
      }
    })
  const onAbort = () => {
    if (!engine.disposed) engine.cancel(id)
  }
  signal?.addEventListener('abort', onAbort, { once: true })

  const decoder = new StreamDecoder(tokenizer, { skipSpecialTokens: req.skipSpecialTokens ?? true })
  const matcher = new StopMatcher(req.stop ?? [])
  const wantLogprobs = sampling.logprobs === true
  const timeline = new Timeline()
  let finish: FinishReason | null = null
  let stopString = false
  let completion = 0
  let lastPrefilled = -1
  let failure = 'the engine failed on this request'

  try {
    yield { type: 'start', promptTokens: ids.length }
    // After a full drain the next event rings the doorbell, so the loop waits for it instead of draining an
    // empty queue; before the first token it also wakes every prefillTickMs to report progress.
    let wait = false
    while (finish === null) {
      if (wait && !ready) await sleep(timeline.firstTokenUs === 0 ? deps.prefillTickMs : null)
      wake = null
      wait = true
      if (engine.disposed) {
        failure = 'the model was disposed during generation'
        finish = 'error'
        break
      }
      if (timeline.firstTokenUs === 0) {
        // Before the first token: read progress now, since a drained finish event releases the id.
        const info = engine.requestInfo(id)
        if (info) {
          timeline.fromInfo(info)
          if (info.nPrefilled !== lastPrefilled && info.nPrefilled < info.nPrompt && info.nPrefilled > 0) {
            lastPrefilled = info.nPrefilled
            yield { type: 'prefill', done: info.nPrefilled, total: info.nPrompt }
          }
        }
      }
      ready = false
      const t0 = generateProfile.enabled ? threadCpuUs() : 0
      const events = engine.drain(id)
      if (events.length === 0) continue
      const tokens: number[] = []
      const logprobs: TokenLogprob[] | undefined = wantLogprobs ? [] : undefined
      for (const ev of events) {
        timeline.onEvent(ev)
        if (ev.token >= 0) completion++
        if (ev.token >= 0 && ev.finish !== 'stop') {
          tokens.push(ev.token)
          logprobs?.push(tokenLogprob(tokenizer, ev))
        }
        if (ev.finish !== 'none') finish = ev.finish
      }
      if (stopString) continue // only draining towards the cancelled finish event now
      let text = matcher.push(decoder.push(tokens))
      if (finish !== null && !text.stopped) text = concatEmit(text, matcher.push(decoder.flush()))
      if (text.stopped) {
        stopString = true
        if (finish === null) engine.cancel(id)
      }
      let out = text.emit
      if (finish !== null && !text.stopped) out += matcher.flush()
      if (tokens.length > 0 || out.length > 0) {
        const delta: GenerateEvent = { type: 'delta', text: out, tokens, logprobs, tUs: events[events.length - 1]!.tUs }
        if (generateProfile.enabled) {
          generateProfile.cpuUs += threadCpuUs() - t0
          generateProfile.tokens += tokens.length
        }
        yield delta
      }
    }
    const reason: FinishReason = stopString ? 'stop' : (finish ?? 'error')
    const stats1 = engine.disposed ? stats0 : engine.stats()
    const forwardUs = stats1.forwardUs - stats0.forwardUs
    const timings = timeline.timings(completion)
    if (forwardUs > 0) timings.attentionShare = Math.min(1, (stats1.attentionUs - stats0.attentionUs) / forwardUs)
    yield {
      type: 'finish',
      reason,
      usage: { promptTokens: ids.length, completionTokens: completion },
      timings,
      ...(reason === 'error' ? { error: failure } : {}),
    }
  } finally {
    signal?.removeEventListener('abort', onAbort)
    if (finish === null) releaseInBackground(engine, id)
  }
}

/** The consumer left early: cancel and drain to the finish event so the engine frees the id. */
function releaseInBackground(engine: NativeEngine, id: number): void {
  if (engine.disposed) return
  engine.cancel(id) // false when it already finished: its finish event still waits to be drained
  const drainOut = () => {
    if (engine.disposed) return
    try {
      engine.drain(id) // drain() drops the listener once the finish event is out
    } catch (e) {
      if (!(e instanceof NativeError) || e.statusName !== 'not_found') throw e
      engine.offReady(id)
    }
  }
  engine.onReady(id, drainOut)
  drainOut()
}

function concatEmit(a: { emit: string; stopped: boolean }, b: { emit: string; stopped: boolean }) {
  return { emit: a.emit + b.emit, stopped: b.stopped }
}

function tokenLogprob(tokenizer: Tokenizer, ev: NativeEvent): TokenLogprob {
  return {
    token: ev.token,
    text: tokenizer.tokenText(ev.token),
    logprob: ev.logprob,
    top: ev.top.map((t) => ({ token: t.token, text: tokenizer.tokenText(t.token), logprob: t.logprob })),
  }
}
