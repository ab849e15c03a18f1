/**
 * @module
 * POST /v1/chat/completions: JSON, or SSE chunks exactly as the openai SDKs parse them (role chunk,
 * content deltas, finish chunk, optional usage chunk with `choices: []`, `data: [DONE]`).
 */

import { Hono } from 'hono'
import type { ChatMessage, GenerateRequest } from '../../src/types.ts'
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
import { checkContext, toPromptOptions, toSampling } from '../sampling.ts'
import { chatRequest, parseBody, type ChatRequest } from '../schemas.ts'
import { clientAbort, eventStream } from '../sse.ts'
import { startGeneration, type AppState, type Generation } from '../state.ts'
import { chatLogprobs, type ChatTokenLogprob } from './logprobs.ts'

/** Rejects what this server cannot honour, with a message that says so (never silently ignored). */
function checkUnsupported(body: ChatRequest): void {
  if (body.tools != null && body.tools.length > 0) {
    throw unsupported('tools', 'tools (function calling) are not supported by this server')
  }
  const choice = body.tool_choice
  if (choice != null && choice !== 'none' && choice !== 'auto') {
    throw unsupported(
      'tool_choice',
      'tool_choice requires tools, which this server does not support',
    )
  }
  for (const legacy of ['functions', 'function_call', 'audio', 'prediction'] as const) {
    if (body[legacy] != null) throw unsupported(legacy, `${legacy} is not supported by this server`)
  }
  const fmt = body.response_format?.type
  if (fmt != null && fmt !== 'text') {
    throw unsupported(
      'response_format',
      `response_format '${fmt}' is not supported: this server has no constrained decoding, so the ` +
        'output could not be guaranteed to match; ask for JSON in the prompt instead',
    )
  }
  if (body.top_logprobs != null && body.top_logprobs > 0 && !body.logprobs) {
    throw badRequest('top_logprobs requires logprobs to be true', 'top_logprobs')
  }
}

/** Text-only messages; developer is treated as system (the MiniCPM4 template knows no developer role). */
function toMessages(messages: ChatRequest['messages']): ChatMessage[] {
  return messages.map((m, i) => {
    if (m.role === 'tool' || m.role === 'function') {
      throw unsupported(
        `messages.${i}.role`,
        `messages[${i}]: role '${m.role}' is not supported (no tool calling)`,
      )
    }
    if (m.tool_calls != null) {
      throw unsupported(`messages.${i}.tool_calls`, `messages[${i}]: tool_calls are not supported`)
    }
    let content = ''
    if (typeof m.content === 'string') content = m.content
    else if (Array.isArray(m.content)) {
      content = m.content
        .map((p, j) => {
          if (p.type !== 'text' || typeof p.text !== 'string') {
            throw unsupported(
              `messages.${i}.content.${j}`,
              `messages[${i}].content[${j}]: content part type '${p.type}' is not supported (text only)`,
            )
          }
          return p.text
        })
        .join('\n')
    } else if (m.role !== 'assistant') {
      throw badRequest(
        `messages[${i}]: content is required for role '${m.role}'`,
        `messages.${i}.content`,
      )
    }
    return { role: m.role === 'developer' ? 'system' : m.role, content }
  })
}

/** Registers POST /v1/chat/completions on a sub-app. */
export function chatRoutes(state: AppState): Hono {
  const app = new Hono()
  app.post('/v1/chat/completions', async (c) => {
    const body = await parseBody(c.req.raw, chatRequest)
    const model = state.get()
    const modelId = state.checkModel(body.model)
    checkUnsupported(body)
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined
    const req: GenerateRequest = {
      ...toSampling(body, model.info, maxTokens),
      messages: toMessages(body.messages),
    }
    const top = body.logprobs ? (body.top_logprobs ?? 0) : 0
    if (body.logprobs) Object.assign(req, { logprobs: true, topLogprobs: top })
    Object.assign(req, toPromptOptions(body))

    const client = clientAbort(c)
    const gen = await startGeneration(state, req, client.signal, c.req.raw)
    try {
      checkContext(gen.promptTokens, maxTokens, model.info)
    } catch (e) {
      gen.cancel()
      throw e
    }
    const head = {
      id: responseId('chatcmpl'),
      created: Math.floor(Date.now() / 1000),
      model: modelId,
    }
    const wantLogprobs = body.logprobs === true
    if (!body.stream) return c.json(await collect(gen, head, wantLogprobs, top))

    const includeUsage = body.stream_options?.include_usage === true
    const base = {
      ...head,
      object: 'chat.completion.chunk',
      system_fingerprint: SYSTEM_FINGERPRINT,
    }
    // With include_usage every chunk carries `usage: null` except the usage chunk (as OpenAI does).
    const usageNull = includeUsage ? { usage: null } : {}
    const chunk = (choice: object) => ({
      ...base,
      choices: [{ index: 0, logprobs: null, ...choice }],
      ...usageNull,
    })
    return eventStream(c, state, 'sse', client, async (sink) => {
      sink.send(chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }))
      sink.startPings(state.pingIntervalMs)
      for await (const ev of gen.events) {
        await sink.ready() // a client that stopped reading pauses delivery here
        if (sink.closed) break
        if (ev.type === 'delta') {
          sink.stopPings()
          const lps = wantLogprobs ? chatLogprobs(ev.logprobs ?? [], top) : null
          if (ev.text === '' && !lps?.length) continue
          sink.send(
            chunk({
              delta: { content: ev.text },
              logprobs: lps ? { content: lps, refusal: null } : null,
              finish_reason: null,
            }),
          )
        } else if (ev.type === 'finish') {
          if (client.signal.aborted) break
          const reason = finishReasonOf(ev)
          sink.send({
            ...chunk({ delta: {}, finish_reason: reason, ...lengthCauseOf(ev) }),
            timings: timingsOf(ev),
          })
          if (includeUsage) sink.send({ ...base, choices: [], usage: usageOf(ev) })
          sink.raw('data: [DONE]\n\n')
        }
      }
    })
  })
  return app
}

async function collect(
  gen: Generation,
  head: { id: string; created: number; model: string },
  wantLogprobs: boolean,
  top: number,
) {
  let text = ''
  const lps: ChatTokenLogprob[] = []
  let fin: FinishEvent | null = null
  for await (const ev of gen.events) {
    if (ev.type === 'delta') {
      text += ev.text
      if (wantLogprobs && ev.logprobs) lps.push(...chatLogprobs(ev.logprobs, top))
    } else if (ev.type === 'finish') fin = ev
  }
  if (!fin) throw new Error('the generation ended without a finish event')
  const reason = finishReasonOf(fin)
  return {
    ...head,
    object: 'chat.completion',
    system_fingerprint: SYSTEM_FINGERPRINT,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: text, refusal: null },
        logprobs: wantLogprobs ? { content: lps, refusal: null } : null,
        finish_reason: reason,
        ...lengthCauseOf(fin),
      },
    ],
    usage: usageOf(fin),
    timings: timingsOf(fin),
  }
}
