/**
 * @module
 * POST /v1/completions (legacy): prompt as string | string[] | int[] | int[][]; several prompts run
 * concurrently in the engine and come back as choices with their index. max_tokens defaults to 16.
 */

import { Hono } from 'hono'
import type { GenerateRequest, ModelInfo } from '../../src/types.ts'
import { badRequest, unsupported } from '../errors.ts'
import {
  finishReasonOf,
  lengthCauseOf,
  responseId,
  SYSTEM_FINGERPRINT,
  timingsOf,
  usageOf,
  type FinishEvent,
} from '../format.ts'
import { checkContext, checkTokenIds, reportIgnoredKeywords, toSampling } from '../sampling.ts'
import { completionRequest, parseBody, type CompletionRequest } from '../schemas.ts'
import { clientAbort, eventStream, type EventSink } from '../sse.ts'
import { startGeneration, type AppState, type Generation, type ServedModel } from '../state.ts'
import { LegacyLogprobBuilder, type LegacyLogprobs } from './logprobs.ts'

const MAX_PROMPTS = 64
const DEFAULT_MAX_TOKENS = 16

function toPrompts(prompt: CompletionRequest['prompt'], info: ModelInfo): Array<string | number[]> {
  let prompts: Array<string | number[]>
  if (typeof prompt === 'string') prompts = [prompt]
  else if (prompt.length === 0) prompts = []
  else if (typeof prompt[0] === 'number') prompts = [prompt as number[]]
  else prompts = prompt as string[] | number[][]
  if (prompts.length === 0) throw badRequest('prompt must not be empty', 'prompt')
  if (prompts.length > MAX_PROMPTS) {
    throw badRequest(`at most ${MAX_PROMPTS} prompts per request (got ${prompts.length})`, 'prompt')
  }
  prompts.forEach((p, i) => {
    if (typeof p === 'string') return
    if (p.length === 0) throw badRequest(`prompt[${i}]: a token prompt must not be empty`, 'prompt')
    checkTokenIds(p, info, 'prompt')
  })
  return prompts
}

function checkUnsupported(body: CompletionRequest): void {
  if (body.best_of != null && body.best_of > 1) {
    throw unsupported(
      'best_of',
      `best_of=${body.best_of} is not supported: this server returns one sample per prompt`,
    )
  }
  if (body.suffix)
    throw unsupported('suffix', 'suffix (fill-in-the-middle) is not supported by this server')
  if (body.echo && body.logprobs != null) {
    throw unsupported(
      'logprobs',
      'echo with logprobs (prompt logprobs) is not supported by this server',
    )
  }
}

interface Choice {
  index: number
  gen: Generation
  echo: string
}

/** Registers POST /v1/completions on a sub-app. */
export function completionRoutes(state: AppState): Hono {
  const app = new Hono()
  app.post('/v1/completions', async (c) => {
    const body = await parseBody(c.req.raw, completionRequest)
    const model = state.get()
    const modelId = state.checkModel(body.model)
    checkUnsupported(body)
    const prompts = toPrompts(body.prompt, model.info)
    const maxTokens = body.max_tokens ?? DEFAULT_MAX_TOKENS
    const base: GenerateRequest = toSampling(body, model.info, maxTokens)
    const top = body.logprobs ?? 0
    if (body.logprobs != null) Object.assign(base, { logprobs: true, topLogprobs: top })
    if (body.add_special_tokens != null) base.addSpecialTokens = body.add_special_tokens
    if (body.skip_special_tokens != null) base.skipSpecialTokens = body.skip_special_tokens
    if (body.split_special_tokens != null) base.splitSpecialTokens = body.split_special_tokens

    const client = clientAbort(c)
    const started = await Promise.allSettled(
      prompts.map((prompt) => startGeneration(state, { ...base, prompt }, client.signal, c.req.raw)),
    )
    const gens = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []))
    const failed = started.find((s) => s.status === 'rejected')
    try {
      if (failed) throw failed.reason
      for (const g of gens) checkContext(g.promptTokens, maxTokens, model.info, 'prompt')
    } catch (e) {
      for (const g of gens) g.cancel()
      throw e
    }
    reportIgnoredKeywords(c, base, state.opts.log)
    const choices: Choice[] = gens.map((gen, index) => ({
      index,
      gen,
      echo: body.echo ? echoText(prompts[index]!, model) : '',
    }))
    const head = { id: responseId('cmpl'), created: Math.floor(Date.now() / 1000), model: modelId }
    const logprobs = body.logprobs != null ? top : null
    if (!body.stream) {
      const results = await Promise.all(choices.map((ch) => collect(ch, logprobs)))
      const usage = sumUsage(results.map((r) => r.fin))
      return c.json({
        ...head,
        object: 'text_completion',
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: results.map((r) => r.choice),
        usage,
        ...(results.length === 1 ? { timings: timingsOf(results[0]!.fin) } : {}),
      })
    }
    const includeUsage = body.stream_options?.include_usage === true
    const chunkBase = { ...head, object: 'text_completion', system_fingerprint: SYSTEM_FINGERPRINT }
    return eventStream(c, state, 'sse', client, async (sink) => {
      sink.startPings(state.pingIntervalMs)
      try {
        const fins = await Promise.all(
          choices.map((ch) => pump(ch, sink, chunkBase, includeUsage, logprobs)),
        )
        if (sink.closed || fins.some((f) => f === null)) return
        if (includeUsage)
          sink.send({ ...chunkBase, choices: [], usage: sumUsage(fins as FinishEvent[]) })
        sink.raw('data: [DONE]\n\n')
      } catch (e) {
        for (const ch of choices) ch.gen.cancel()
        throw e
      }
    })
  })
  return app
}

function echoText(prompt: string | number[], model: ServedModel): string {
  return typeof prompt === 'string'
    ? prompt
    : model.detokenize(prompt, { skipSpecialTokens: false })
}

function sumUsage(fins: FinishEvent[]) {
  const u = {
    prompt_tokens: 0,
    completion_tokens: 0,
    total_tokens: 0,
    prompt_tokens_details: { cached_tokens: 0 },
  }
  for (const f of fins) {
    const x = usageOf(f)
    u.prompt_tokens += x.prompt_tokens
    u.completion_tokens += x.completion_tokens
    u.total_tokens += x.total_tokens
    u.prompt_tokens_details.cached_tokens += x.prompt_tokens_details.cached_tokens
  }
  return u
}

async function collect(ch: Choice, top: number | null) {
  let text = ch.echo
  const lp = top != null ? new LegacyLogprobBuilder(text.length, top) : null
  let fin: FinishEvent | null = null
  for await (const ev of ch.gen.events) {
    if (ev.type === 'delta') {
      text += ev.text
      if (lp && ev.logprobs) lp.push(ev.logprobs)
    } else if (ev.type === 'finish') fin = ev
  }
  if (!fin) throw new Error('the generation ended without a finish event')
  const choice = {
    index: ch.index,
    text,
    logprobs: lp?.value ?? null,
    finish_reason: finishReasonOf(fin),
    ...lengthCauseOf(fin),
  }
  return { choice, fin }
}

/** Streams one choice's chunks; null when the client went away before it finished. */
async function pump(
  ch: Choice,
  sink: EventSink,
  base: object,
  includeUsage: boolean,
  top: number | null,
): Promise<FinishEvent | null> {
  const usageNull = includeUsage ? { usage: null } : {}
  const send = (text: string, logprobs: LegacyLogprobs | null, finish_reason: string | null) =>
    sink.send({
      ...base,
      choices: [{ index: ch.index, text, logprobs, finish_reason }],
      ...usageNull,
    })
  const lp = top != null ? new LegacyLogprobBuilder(ch.echo.length, top) : null
  if (ch.echo) send(ch.echo, null, null)
  for await (const ev of ch.gen.events) {
    await sink.ready() // a client that stopped reading pauses delivery here
    if (sink.closed) return null
    if (ev.type === 'delta') {
      sink.stopPings()
      const part = lp && ev.logprobs?.length ? lp.push(ev.logprobs) : null
      if (ev.text !== '' || part) send(ev.text, part, null)
    } else if (ev.type === 'finish') {
      const reason = finishReasonOf(ev)
      sink.send({
        ...base,
        choices: [
          { index: ch.index, text: '', logprobs: null, finish_reason: reason, ...lengthCauseOf(ev) },
        ],
        ...usageNull,
        timings: timingsOf(ev),
      })
      return ev
    }
  }
  return null
}
