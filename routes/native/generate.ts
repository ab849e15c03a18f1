/**
 * @module
 * POST /generate: the native streaming endpoint. SSE (default) or NDJSON (Accept:
 * application/x-ndjson or "format":"ndjson") events carrying token ids, text deltas, optional
 * logprobs and timings; or one JSON object with "stream": false. Documented in README.md (Native streaming).
 */

import { Hono } from 'hono'
import type { GenerateRequest, TokenLogprob } from '../../src/types.ts'
import { badRequest } from '../errors.ts'
import { lengthCauseOf, responseId, timingsOf, usageOf, type FinishEvent } from '../format.ts'
import { checkContext, checkTokenIds, reportIgnoredKeywords, toPromptOptions, toSampling } from '../sampling.ts'
import { generateRequest, parseBody, type NativeGenerateRequest } from '../schemas.ts'
import { clientAbort, eventStream, type Framing } from '../sse.ts'
import { startGeneration, type AppState } from '../state.ts'

function framingOf(body: NativeGenerateRequest, accept: string): Framing | 'json' {
  if (body.format) return body.format
  if (body.stream === false) return 'json'
  return accept.includes('application/x-ndjson') ? 'ndjson' : 'sse'
}

const logprobsOut = (lps: TokenLogprob[] | undefined, top: number) =>
  lps?.map((lp) => ({
    token: lp.token,
    text: lp.text,
    logprob: lp.logprob,
    top: lp.top.slice(0, top),
  }))

/** Registers POST /generate on a sub-app. */
export function generateRoutes(state: AppState): Hono {
  const app = new Hono()
  app.post('/generate', async (c) => {
    const body = await parseBody(c.req.raw, generateRequest)
    const model = state.get()
    const modelId = state.checkModel(body.model)
    if ((body.prompt == null) === (body.messages == null)) {
      throw badRequest('exactly one of prompt or messages is required', 'prompt')
    }
    if (Array.isArray(body.prompt)) {
      if (body.prompt.length === 0) throw badRequest('a token prompt must not be empty', 'prompt')
      checkTokenIds(body.prompt, model.info, 'prompt')
    }
    const maxTokens = body.max_tokens ?? undefined
    const req: GenerateRequest = { ...toSampling(body, model.info, maxTokens) }
    if (body.prompt != null) req.prompt = body.prompt
    if (body.messages != null) req.messages = body.messages as GenerateRequest['messages']
    const top = body.top_logprobs ?? 0
    if (body.logprobs) Object.assign(req, { logprobs: true, topLogprobs: top })
    Object.assign(req, toPromptOptions(body))

    const client = clientAbort(c)
    const t0 = performance.now()
    const gen = await startGeneration(state, req, client.signal, c.req.raw)
    try {
      checkContext(
        gen.promptTokens,
        maxTokens,
        model.info,
        body.prompt != null ? 'prompt' : 'messages',
      )
    } catch (e) {
      gen.cancel()
      throw e
    }
    reportIgnoredKeywords(c, req, state.opts.log)
    const id = responseId('gen')
    const finishOut = (fin: FinishEvent) => ({
      finish_reason: fin.reason,
      ...lengthCauseOf(fin),
      ...(fin.error ? { error: fin.error } : {}),
      usage: usageOf(fin),
      timings: timingsOf(fin),
    })
    const framing = framingOf(body, c.req.header('accept') ?? '')
    if (framing === 'json') {
      let text = ''
      const ids: number[] = []
      const lps: TokenLogprob[] = []
      let fin: FinishEvent | null = null
      for await (const ev of gen.events) {
        if (ev.type === 'delta') {
          text += ev.text
          ids.push(...ev.tokens)
          if (ev.logprobs) lps.push(...ev.logprobs)
        } else if (ev.type === 'finish') fin = ev
      }
      if (!fin) throw new Error('the generation ended without a finish event')
      return c.json({
        id,
        model: modelId,
        text,
        token_ids: ids,
        ...(body.logprobs ? { logprobs: logprobsOut(lps, top) } : {}),
        ...finishOut(fin),
      })
    }
    return eventStream(c, state, framing, client, async (sink) => {
      sink.send({ type: 'start', id, model: modelId, prompt_tokens: gen.promptTokens })
      sink.startPings(state.pingIntervalMs)
      for await (const ev of gen.events) {
        await sink.ready() // a client that stopped reading pauses delivery here
        if (sink.closed) break
        if (ev.type === 'prefill') sink.send({ type: 'prefill', done: ev.done, total: ev.total })
        else if (ev.type === 'delta') {
          sink.stopPings()
          sink.send({
            type: 'delta',
            text: ev.text,
            token_ids: ev.tokens,
            elapsed_ms: Math.round((performance.now() - t0) * 1000) / 1000,
            ...(body.logprobs ? { logprobs: logprobsOut(ev.logprobs, top) } : {}),
          })
        } else if (ev.type === 'finish') sink.send({ type: 'finish', ...finishOut(ev) })
      }
    })
  })
  return app
}
