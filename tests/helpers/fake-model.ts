/**
 * A small deterministic stand-in for src/index.ts `Model`, for exact-frame route tests: one character
 * per token (id = char code), a fixed reply text, switches for engine failures. Stop strings are the
 * runtime's job and not imitated here (routes only pass them on). The suites also run
 * against the real tiny checkpoint (tests/helpers/server-model.ts).
 */
import type { ToolFormat } from '../../src/chat/tools/index.ts'
import type { ServedModel } from '../../routes/app.ts'
import type {
  ChatMessage,
  EngineStats,
  GenerateEvent,
  GenerateRequest,
  ModelInfo,
} from '../../src/types.ts'

const BOS = 1
const EOS = 2

/** Knobs a test flips to drive the fake through an engine behaviour. */
export interface FakeBehaviour {
  reply: string // generated text, one token per character, then EOS (unless ignoreEos)
  tokenDelayMs: number // between tokens
  prefillDelayMs: number // before the first token
  submitError: { statusName: string; message: string } | null // thrown by the submit
  errorAfter: number | null // finish with reason 'error' after this many tokens
}

class FakeNativeError extends Error {
  constructor(
    readonly statusName: string,
    message: string,
  ) {
    super(message)
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (ms <= 0 || signal?.aborted) return resolve()
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true })
  })

export class FakeModel implements ServedModel {
  /** Tests that exercise tool calls set a format (the fake renders its own prompt regardless). */
  toolFormat: ToolFormat | null = null
  readonly info: ModelInfo = {
    id: 'fake-model',
    dir: '/nonexistent',
    randomWeights: true,
    nVocab: 512,
    nCtx: 64,
    nCtxTrain: 64,
    nLayer: 1,
    nEmbd: 8,
    weightDtype: 'f32',
    kvDtype: 'bf16',
    nParams: 1,
    weightBytes: 4,
    eosTokenIds: [EOS],
    bosTokenId: BOS,
    backend: 'cpu',
    backendName: 'fake',
    sparseConfig: false,
    sparseAttention: 'off',
    quantizationConfig: false,
    warnings: [],
    toolFormat: null,
  }
  behaviour: FakeBehaviour = {
    reply: 'Hello world',
    tokenDelayMs: 0,
    prefillDelayMs: 0,
    submitError: null,
    errorAfter: null,
  }
  /** Every request the fake saw, to check what the routes passed on. */
  readonly requests: GenerateRequest[] = []
  private running = new Map<number, number>() // request -> KV tokens held
  private nextId = 1

  tokenize(text: string, opts?: { addSpecialTokens?: boolean }): number[] {
    const ids = Array.from(text, (ch) => ch.codePointAt(0)! % this.info.nVocab)
    return (opts?.addSpecialTokens ?? true) ? [BOS, ...ids] : ids
  }

  detokenize(ids: number[], opts?: { skipSpecialTokens?: boolean }): string {
    return ids
      .map((id) => (id <= EOS ? (opts?.skipSpecialTokens ? '' : `<${id}>`) : this.tokenText(id)))
      .join('')
  }

  tokenText(id: number): string {
    return String.fromCodePoint(id)
  }

  async tokenizeAsync(text: string, opts?: { addSpecialTokens?: boolean; withPieces?: boolean }) {
    const ids = this.tokenize(text, opts)
    return { ids, ...(opts?.withPieces ? { pieces: ids.map((id) => this.tokenText(id)) } : {}) }
  }

  async tokenizeJson(text: string, opts?: { addSpecialTokens?: boolean; withPieces?: boolean }) {
    const r = await this.tokenizeAsync(text, opts)
    const list = r.pieces ? r.ids.map((id, i) => ({ id, piece: r.pieces![i] })) : r.ids
    return { count: r.ids.length, json: JSON.stringify(list) }
  }

  async detokenizeAsync(ids: number[], opts?: { skipSpecialTokens?: boolean }): Promise<string> {
    return this.detokenize(ids, opts)
  }

  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string {
    const text = (c: ChatMessage['content']) =>
      typeof c === 'string' ? c : c.map((p) => p.text).join('')
    const body = messages.map((m) => `<${m.role}>${text(m.content)}`).join('')
    return body + (opts?.addGenerationPrompt === false ? '' : '<assistant>')
  }

  stats(): EngineStats {
    let used = 0
    for (const n of this.running.values()) used += n
    return {
      backend: 'cpu',
      backendName: 'fake',
      running: this.running.size,
      waiting: 0,
      kvTokensUsed: used,
      kvTokensTotal: 4096,
      steps: 0,
      promptTokens: 0,
      generatedTokens: 0,
      errors: 0,
      prefixQueryTokens: 0,
      prefixHitTokens: 0,
      prefixEvictions: 0,
      kvTokensCached: 0,
      prefixCache: 1,
      specVerifies: 0,
      specDrafted: 0,
      specAccepted: 0,
      specAtDepth: [],
      specMeanAcceptLength: 0,
      specDepthAcceptance: [],
      forwardUs: 0,
      attentionUs: 0,
      graphCaptures: 0,
      graphReplays: 0,
      graphFallbacks: 0,
    }
  }

  async *generate(req: GenerateRequest): AsyncGenerator<GenerateEvent> {
    this.requests.push(req)
    const b = this.behaviour
    const prompt =
      req.messages != null
        ? this.tokenize(
            this.applyChatTemplate(req.messages, { addGenerationPrompt: req.addGenerationPrompt }),
          )
        : typeof req.prompt === 'string'
          ? this.tokenize(req.prompt, { addSpecialTokens: req.addSpecialTokens })
          : (req.prompt ?? [])
    if (b.submitError) throw new FakeNativeError(b.submitError.statusName, b.submitError.message)
    if (prompt.length > this.info.nCtx) {
      throw new FakeNativeError(
        'too_large',
        `prompt of ${prompt.length} tokens exceeds n_ctx ${this.info.nCtx}`,
      )
    }
    const id = this.nextId++
    this.running.set(id, prompt.length)
    const usage = (n: number) => ({ promptTokens: prompt.length, completionTokens: n, cachedTokens: 0 })
    // Nominal, not measured: exact-frame tests compare whole chunks.
    const timings = (n: number) => ({
      queueMs: 0,
      prefillMs: b.prefillDelayMs,
      decodeMs: n * b.tokenDelayMs,
      perTokenMs: b.tokenDelayMs,
    })
    try {
      yield { type: 'start', promptTokens: prompt.length }
      await sleep(b.prefillDelayMs, req.signal)
      const max = req.maxTokens ?? this.info.nCtx - prompt.length
      let n = 0
      for (;;) {
        if (req.signal?.aborted) {
          yield { type: 'finish', reason: 'cancelled', usage: usage(n), timings: timings(n) }
          return
        }
        if (b.errorAfter !== null && n >= b.errorAfter) {
          yield {
            type: 'finish',
            reason: 'error',
            usage: usage(n),
            timings: timings(n),
            error: 'fake engine failure',
          }
          return
        }
        if (n >= max) break
        const ch = b.reply[n % b.reply.length]!
        if (n >= b.reply.length && !req.ignoreEos) {
          yield { type: 'finish', reason: 'stop', usage: usage(n + 1), timings: timings(n + 1) }
          return
        }
        n++
        this.running.set(id, prompt.length + n)
        const tok = ch.codePointAt(0)!
        const lp = req.logprobs
          ? [
              {
                token: tok,
                text: ch,
                logprob: -0.25,
                top: [
                  { token: tok, text: ch, logprob: -0.25 },
                  { token: 33, text: '!', logprob: -2 },
                ],
              },
            ]
          : undefined
        yield { type: 'delta', text: ch, tokens: [tok], logprobs: lp, tUs: 0 }
        await sleep(b.tokenDelayMs, req.signal)
      }
      yield { type: 'finish', reason: 'length', usage: usage(n), timings: timings(n) }
    } finally {
      this.running.delete(id)
    }
  }
}
