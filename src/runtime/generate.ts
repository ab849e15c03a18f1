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
import { ChatTemplateError } from '../chat/index'
import type { ChatMessage, FinishReason, GenerateEvent, GenerateRequest, SamplingOptions, TokenLogprob } from '../types'
import { Timeline } from './timeline'
import { grammarService, type ConstrainedDecoder } from './grammar'

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
  /** Chat template (rejects when the model has none, or when the template runs past its budget). */
  render: (req: GenerateRequest) => Promise<string>
  /** Tokenizes (large texts off the main thread); split: special-token text stays text. */
  encode: (text: string, o: { addSpecialTokens: boolean; split: boolean }) => Promise<number[]>
  defaults: SamplingOptions
  nVocab: number
  nCtx: number
  prefillTickMs: number
}

/** A prompt that cannot fit the context, found before any tokenizing: mapped to HTTP 400 context_length_exceeded. */
export class PromptTooLongError extends Error {
  override name = 'PromptTooLongError'
  readonly statusName = 'too_large'
}

/** Refuses text that needs more tokens than the context holds even at the longest piece per token. */
function checkChars(deps: GenerateDeps, chars: number, what: string): void {
  const atLeast = Math.ceil(chars / Math.max(1, deps.tokenizer.maxPieceChars))
  if (atLeast >= deps.nCtx) {
    throw new PromptTooLongError(
      `${what} has ${chars} characters, at least ${atLeast} tokens (${deps.tokenizer.maxPieceChars} characters ` +
        `per token at most), which does not fit the context of ${deps.nCtx} tokens`,
    )
  }
}

const contentOf = (m: ChatMessage): string =>
  typeof m.content === 'string' ? m.content : Array.isArray(m.content) ? m.content.map((p) => p?.text ?? '').join('') : ''

export async function promptTokens(deps: GenerateDeps, req: GenerateRequest): Promise<number[]> {
  const addSpecialTokens = req.addSpecialTokens ?? true
  if (req.messages !== undefined) {
    if (req.prompt !== undefined) throw new TypeError('generate: give either prompt or messages, not both')
    if (Array.isArray(req.messages)) {
      checkChars(deps, req.messages.reduce((n, m) => n + contentOf(m).length, 0), 'messages content')
    }
    const text = await deps.render(req)
    checkChars(deps, text.length, 'the rendered chat prompt')
    return chatTokens(deps, req, text, addSpecialTokens)
  }
  if (typeof req.prompt === 'string') {
    checkChars(deps, req.prompt.length, 'prompt')
    return deps.encode(req.prompt, { addSpecialTokens, split: req.splitSpecialTokens ?? true })
  }
  if (Array.isArray(req.prompt)) return req.prompt
  throw new TypeError('generate: a prompt (text or token ids) or messages is required')
}

/**
 * A rendered chat prompt as tokens where only the template's own markup can be a special token. Content that
 * holds no special-token text tokenizes the same either way (the common case: one plain encode). Otherwise the
 * template is rendered again with each content replaced by a sentinel; the markup between sentinels is encoded
 * with special tokens, each content as text (split_special_tokens), so 'hi<|im_end|>' cannot forge a turn.
 */
async function chatTokens(
  deps: GenerateDeps,
  req: GenerateRequest,
  text: string,
  addSpecialTokens: boolean,
): Promise<number[]> {
  const { tokenizer } = deps
  const messages = req.messages ?? []
  const contents = messages.map(contentOf)
  const hasSpecial = (c: string) => tokenizer.specialTokens.some((t) => t !== '' && c.includes(t))
  if (!contents.some(hasSpecial)) return deps.encode(text, { addSpecialTokens, split: false })
  const mark = (i: number) => `\u{F0000}${i}\u{F0001}`
  const marked = await deps.render({ ...req, messages: messages.map((m, i) => ({ ...m, content: mark(i) })) })
  const parts = marked.split(/\u{F0000}(\d+)\u{F0001}/u)
  // parts: markup, index, markup, index, ..., markup; substituting the contents back must give `text` exactly.
  let rebuilt = ''
  for (let k = 0; k < parts.length; k++) rebuilt += k % 2 === 0 ? parts[k] : contents[Number(parts[k])]
  if (rebuilt !== text) {
    throw new ChatTemplateError(
      'a message contains special-token text and the chat template alters message content, so it cannot be ' +
        'kept as plain text; remove the special-token text from the message',
    )
  }
  const ids = addSpecialTokens ? tokenizer.encode('', { addSpecialTokens: true }) : []
  for (let k = 0; k < parts.length; k++) {
    const piece = k % 2 === 0 ? parts[k]! : contents[Number(parts[k])]!
    if (piece === '') continue
    ids.push(...(k % 2 === 0 ? tokenizer.encode(piece, { addSpecialTokens: false }) : tokenizer.encodeText(piece, { addSpecialTokens: false })))
  }
  return ids
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
    speculative: req.speculative,
    logprobs: req.logprobs || (req.topLogprobs ?? 0) > 0,
    topLogprobs: req.topLogprobs,
  }
}

/** The request's events; throws (before any event) on a bad request or a submit the engine refuses. */
export async function* generate(deps: GenerateDeps, req: GenerateRequest): AsyncGenerator<GenerateEvent> {
  const { engine, tokenizer } = deps
  const ids = await promptTokens(deps, req)
  const sampling = samplingOf(req, deps.defaults)
  if (sampling.maxTokens !== undefined) {
    const pool = engine.stats().kvTokensTotal
    if (ids.length + sampling.maxTokens > pool) {
      throw new PromptTooLongError(
        `prompt of ${ids.length} tokens + max_tokens ${sampling.maxTokens} = ${ids.length + sampling.maxTokens} ` +
          `tokens can never fit the KV cache pool of ${pool} tokens (smaller than the context of ${deps.nCtx}); ` +
          'lower max_tokens or start the server with a larger --kv-bytes',
      )
    }
  }
  const signal = req.signal
  if (signal?.aborted) {
    yield {
      type: 'finish',
      reason: 'cancelled',
      usage: { promptTokens: ids.length, completionTokens: 0, cachedTokens: 0 },
      timings: Timeline.empty(),
    }
    return
  }
  // The engine stops on config.json's EOS ids; the tokenizer may know more (e.g. <|im_end|> from tokenizer_config),
  // which a small test vocabulary may not contain.
  let grammar: ConstrainedDecoder | null = null
  if (req.responseFormat) {
    sampling.ignoreEos = false // the grammar ends the document with a stop token
    sampling.masked = true
    const eos = tokenizer.eosIds.filter((t) => t < deps.nVocab)
    // The tokens this request may generate, stop token included: the closing mode keeps the document within them.
    const room = deps.nCtx - ids.length
    const budget = Math.min(sampling.maxTokens ?? room, room)
    const what =
      budget === sampling.maxTokens
        ? `max_tokens ${budget}`
        : `the room of ${budget} tokens that the context of ${deps.nCtx} leaves after the prompt of ${ids.length}`
    grammar = await grammarService(tokenizer, deps.nVocab).matcher(req.responseFormat, [...new Set([...eos, ...(req.stopTokenIds ?? [])])], budget, what)
  }
  const eosIds = sampling.ignoreEos ? [] : tokenizer.eosIds.filter((t) => t < deps.nVocab)
  const stopIds = [...(req.stopTokenIds ?? []), ...eosIds]
  let id: number
  try {
    id = engine.submit(ids, sampling, { stopIds, logitBias: req.logitBias })
    if (grammar) engine.setMask(id, await grammar.nextMask())
  } catch (e) {
    grammar?.dispose()
    throw e
  }
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
  let cachedTokens = 0
  let admitted = false // request info seen past 'waiting': cachedTokens is final
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
      if (timeline.firstTokenUs === 0 || !admitted) {
        // Before the first token: read progress now, since a drained finish event releases the id.
        const info = engine.requestInfo(id)
        if (info) {
          if (info.state !== 'waiting') {
            admitted = true
            cachedTokens = info.nCached
          }
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
      if (grammar) {
        // Advance the grammar and hand the engine the next mask before anything else: the request samples again
        // only once it has it.
        for (const ev of events) if (ev.token >= 0 && ev.finish !== 'stop') grammar.accept(ev.token)
        if (events[events.length - 1]!.finish === 'none') engine.setMask(id, await grammar.nextMask())
      }
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
    // The engine says 'length' for three limits: tell them apart (a pool smaller than the context cuts early).
    const lengthCause =
      reason !== 'length'
        ? undefined
        : sampling.maxTokens !== undefined && completion >= sampling.maxTokens
          ? 'max_tokens'
          : ids.length + completion >= deps.nCtx
            ? 'n_ctx'
            : 'kv_cache'
    const stats1 = engine.disposed ? stats0 : engine.stats()
    const forwardUs = stats1.forwardUs - stats0.forwardUs
    const timings = timeline.timings(completion)
    if (forwardUs > 0) timings.attentionShare = Math.min(1, (stats1.attentionUs - stats0.attentionUs) / forwardUs)
    yield {
      type: 'finish',
      reason,
      usage: { promptTokens: ids.length, completionTokens: completion, cachedTokens },
      timings,
      ...(reason === 'error' ? { error: failure } : {}),
      ...(lengthCause ? { lengthCause } : {}),
    }
  } finally {
    signal?.removeEventListener('abort', onAbort)
    grammar?.dispose()
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
