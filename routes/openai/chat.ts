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
import { checkContext, reportIgnoredKeywords, toPromptOptions, toSampling } from '../sampling.ts'
import { chatRequest, parseBody, type ChatRequest } from '../schemas.ts'
import { clientAbort, eventStream } from '../sse.ts'
import { startGeneration, type AppState, type Generation } from '../state.ts'
import { chatLogprobs, type ChatTokenLogprob } from './logprobs.ts'
import { planTools, toolCallsOf, ToolOutput, type OpenAiToolCall } from './tools.ts'
import type { ToolFormat } from '../../src/chat/tools/index.ts'

/** Rejects what this server cannot honour, with a message that says so (never silently ignored). */
function checkUnsupported(body: ChatRequest): void {
  for (const legacy of ['functions', 'function_call', 'audio', 'prediction'] as const) {
    if (body[legacy] != null) throw unsupported(legacy, `${legacy} is not supported by this server`)
  }
  if (body.top_logprobs != null && body.top_logprobs > 0 && !body.logprobs) {
    throw badRequest('top_logprobs requires logprobs to be true', 'top_logprobs')
  }
}

/**
 * Text-only messages; developer is treated as system (the MiniCPM4 template knows no developer role). Tool
 * turns and assistant tool_calls need the model's tool format.
 */
function toMessages(messages: ChatRequest['messages'], format: ToolFormat | null): ChatMessage[] {
  return messages.map((m, i) => {
    if (m.role === 'function') {
      throw unsupported(`messages.${i}.role`, `messages[${i}]: role 'function' is not supported (use 'tool')`)
    }
    const hasCalls = m.tool_calls != null && !(Array.isArray(m.tool_calls) && m.tool_calls.length === 0)
    if ((m.role === 'tool' || hasCalls) && !format) {
      throw unsupported(
        `messages.${i}.${m.role === 'tool' ? 'role' : 'tool_calls'}`,
        `messages[${i}]: ${m.role === 'tool' ? "role 'tool'" : 'tool_calls'} needs a model with a tool format`,
      )
    }
    if (hasCalls && m.role !== 'assistant') {
      throw badRequest(`messages[${i}]: only assistant messages carry tool_calls`, `messages.${i}.tool_calls`)
    }
    const toolCalls = hasCalls ? toolCallsOf(m.tool_calls, i) : undefined
    const reasoning = typeof m.reasoning_content === 'string' ? m.reasoning_content : undefined
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
    return {
      role: m.role === 'developer' ? 'system' : m.role,
      content,
      ...(toolCalls ? { toolCalls } : {}),
      ...(reasoning ? { reasoning } : {}),
    }
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
    const format = model.toolFormat ?? null
    const plan = planTools(body.tools, body.tool_choice, format)
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined
    const req: GenerateRequest = {
      ...toSampling(body, model.info, maxTokens),
      messages: toMessages(body.messages, format),
      ...(plan.tools.length > 0 ? { tools: plan.tools } : {}),
    }
    if (plan.force) {
      if (req.responseFormat) throw badRequest('response_format cannot be combined with a forced tool call', 'response_format')
      // The call block, constrained so that it always parses (even from random weights).
      req.responseFormat = { type: 'tool_call', tools: plan.force.map((t) => ({ name: t.name, parameters: t.parameters })) }
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
    reportIgnoredKeywords(c, req, state.opts.log)
    const head = {
      id: responseId('chatcmpl'),
      created: Math.floor(Date.now() / 1000),
      model: modelId,
    }
    const wantLogprobs = body.logprobs === true
    const tooling = plan.parse && format ? format : null
    if (!body.stream) return c.json(await collect(gen, head, wantLogprobs, top, tooling))

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
    const tools = tooling ? new ToolOutput(tooling) : null
    return eventStream(c, state, 'sse', client, async (sink) => {
      sink.send(chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }))
      sink.startPings(state.pingIntervalMs)
      // With tools, text goes through the format's parser: content and reasoning as they come (partial
      // markers held back), each tool call whole once its block closes.
      const sendParts = (p: { content: string; reasoning: string; calls: OpenAiToolCall[] }, lps: object[] | null) => {
        if (p.reasoning) sink.send(chunk({ delta: { reasoning_content: p.reasoning }, finish_reason: null }))
        if (p.content || lps?.length) {
          sink.send(
            chunk({
              delta: { content: p.content },
              logprobs: lps ? { content: lps, refusal: null } : null,
              finish_reason: null,
            }),
          )
        }
        if (p.calls.length > 0) sink.send(chunk({ delta: { tool_calls: p.calls }, finish_reason: null }))
      }
      for await (const ev of gen.events) {
        await sink.ready() // a client that stopped reading pauses delivery here
        if (sink.closed) break
        if (ev.type === 'delta') {
          sink.stopPings()
          const lps = wantLogprobs ? chatLogprobs(ev.logprobs ?? [], top) : null
          if (tools) {
            sendParts(tools.push(ev.text), lps)
            continue
          }
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
          let reason: string = finishReasonOf(ev)
          if (tools) {
            sendParts(tools.end(), null)
            if (tools.called) reason = 'tool_calls'
          }
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
  tooling: ToolFormat | null,
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
  let reason: string = finishReasonOf(fin)
  let message: Record<string, unknown> = { role: 'assistant', content: text, refusal: null }
  if (tooling) {
    const out = new ToolOutput(tooling)
    const a = out.push(text)
    const b = out.end()
    const calls = [...a.calls, ...b.calls]
    const content = a.content + b.content
    const reasoning = a.reasoning + b.reasoning
    message = {
      role: 'assistant',
      content: calls.length > 0 && content === '' ? null : content,
      refusal: null,
      ...(reasoning ? { reasoning_content: reasoning } : {}),
      ...(calls.length > 0 ? { tool_calls: calls.map(({ index: _i, ...c }) => c) } : {}),
    }
    if (calls.length > 0) reason = 'tool_calls'
  }
  return {
    ...head,
    object: 'chat.completion',
    system_fingerprint: SYSTEM_FINGERPRINT,
    choices: [
      {
        index: 0,
        message,
        logprobs: wantLogprobs ? { content: lps, refusal: null } : null,
        finish_reason: reason,
        ...lengthCauseOf(fin),
      },
    ],
    usage: usageOf(fin),
    timings: timingsOf(fin),
  }
}
