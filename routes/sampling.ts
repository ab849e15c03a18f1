/**
 * @module
 * Request fields -> the runtime's SamplingOptions, with the checks that need the model (token id
 * ranges, context length). Only fields the client set are copied, so the model's generation_config
 * defaults still apply to the others.
 */

import type { GenerateRequest, ModelInfo, ResponseFormat, SamplingOptions } from '../src/types.ts'
import type { Context } from 'hono'
import { prepareSchema, UnsupportedSchemaError } from '../src/runtime/schema-check.ts'
import { ApiError, badRequest, unsupported } from './errors.ts'

/** The snake_case sampling fields as validated by schemas.ts `samplingFields`. */
export interface SamplingBody {
  temperature?: number | null
  top_p?: number | null
  top_k?: number | null
  min_p?: number | null
  repetition_penalty?: number | null
  presence_penalty?: number | null
  frequency_penalty?: number | null
  penalty_last_n?: number | null
  seed?: number | null
  max_tokens?: number | null
  stop?: string | string[] | null
  stop_token_ids?: number[] | null
  logit_bias?: Record<string, number> | Array<[number, number]> | null
  ignore_eos?: boolean | null
  speculative?: boolean | null
  n?: number | null
  response_format?: {
    type: 'text' | 'json_object' | 'json_schema'
    json_schema?: { name?: string; schema?: unknown; strict?: boolean | null }
  } | null
}

/** response_format -> ResponseFormat; schema keywords the constrained decoder cannot honour are a 400 naming them. */
function responseFormat(body: SamplingBody): ResponseFormat | undefined {
  const rf = body.response_format
  if (rf == null || rf.type === 'text') return undefined
  if (rf.type === 'json_object') return { type: 'json_object' }
  const js = rf.json_schema
  const schema = js?.schema ?? (js ? { type: 'object' } : undefined)
  if (schema === undefined) {
    throw badRequest("response_format json_schema needs json_schema: {name, schema, strict?}", 'response_format.json_schema')
  }
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw badRequest('response_format.json_schema.schema must be a JSON schema object', 'response_format.json_schema.schema')
  }
  const strict = js?.strict ?? false
  try {
    // strict: every keyword must be honoured (400 naming the first that is not); otherwise the runtime drops
    // what it cannot honour and the route names it (reportIgnoredKeywords). A malformed schema is a 400 either way.
    prepareSchema(schema, strict)
  } catch (e) {
    if (e instanceof UnsupportedSchemaError) throw unsupported('response_format.json_schema.schema', e.message)
    throw e
  }
  return { type: 'json_schema', schema: schema as Record<string, unknown>, strict, name: js?.name }
}

/** The response header naming the schema keywords a strict: false request had ignored (JSON pointers). */
export const IGNORED_KEYWORDS_HEADER = 'x-minicpm-ignored-schema-keywords'

/**
 * After startGeneration (the grammar is compiled by then): names the schema keywords left out under strict: false
 * in a response header and a warning line in the log.
 */
export function reportIgnoredKeywords(c: Context, req: GenerateRequest, log: ((line: string) => void) | undefined): void {
  const fmt = req.responseFormat
  if (fmt?.type !== 'json_schema' || !fmt.ignored?.length) return
  const list = fmt.ignored.join(', ')
  c.header(IGNORED_KEYWORDS_HEADER, list)
  const id = c.res.headers.get('x-request-id') ?? c.req.header('x-request-id') ?? '-'
  log?.(`${id} warning: response_format json_schema with strict: false: ignored schema keywords ${JSON.stringify(list)}`)
}

function checkTokenId(id: number, info: ModelInfo, param: string): number {
  if (!Number.isInteger(id) || id < 0 || id >= info.nVocab) {
    throw badRequest(
      `${param}: token id ${id} is out of range [0, ${info.nVocab})`,
      param,
      'invalid_token',
    )
  }
  return id
}

/** Validates token ids against the vocabulary (a token prompt, /detokenize). */
export function checkTokenIds(ids: number[], info: ModelInfo, param: string): number[] {
  for (const id of ids) checkTokenId(id, info, param)
  return ids
}

function logitBias(body: SamplingBody, info: ModelInfo): Record<number, number> | undefined {
  const lb = body.logit_bias
  if (lb == null) return undefined
  const out: Record<number, number> = {}
  const entries: Array<[string | number, number]> = Array.isArray(lb) ? lb : Object.entries(lb)
  for (const [k, v] of entries) {
    const id = typeof k === 'number' ? k : /^\d+$/.test(k) ? Number(k) : NaN
    if (Number.isNaN(id)) throw badRequest(`logit_bias: key '${k}' is not a token id`, 'logit_bias')
    out[checkTokenId(id, info, 'logit_bias')] = v
  }
  return out
}

/**
 * Maps the shared sampling fields. `maxTokens` is the already-resolved limit (max_completion_tokens
 * or max_tokens or an endpoint default); a limit beyond the context is a 400 here.
 */
export function toSampling(
  body: SamplingBody,
  info: ModelInfo,
  maxTokens: number | null | undefined,
): SamplingOptions {
  if (body.n != null && body.n > 1) {
    throw unsupported(
      'n',
      `n=${body.n} is not supported: this server returns exactly one choice (n=1)`,
    )
  }
  if (maxTokens != null && maxTokens > info.nCtx) {
    throw badRequest(
      `max_tokens=${maxTokens} exceeds the model's context length of ${info.nCtx} tokens`,
      'max_tokens',
      'context_length_exceeded',
    )
  }
  const s: SamplingOptions = {}
  const set = <K extends keyof SamplingOptions>(k: K, v: SamplingOptions[K] | null | undefined) => {
    if (v != null) s[k] = v
  }
  set('temperature', body.temperature)
  set('topP', body.top_p)
  // -1 is llama.cpp's and vLLM's spelling of "top-k off"; the engine uses 0.
  set('topK', body.top_k == null ? null : Math.max(0, body.top_k))
  set('minP', body.min_p)
  set('repetitionPenalty', body.repetition_penalty)
  set('presencePenalty', body.presence_penalty)
  set('frequencyPenalty', body.frequency_penalty)
  set('penaltyLastN', body.penalty_last_n)
  set('seed', body.seed)
  set('maxTokens', maxTokens)
  set('ignoreEos', body.ignore_eos)
  set('speculative', body.speculative)
  if (body.stop != null) {
    const stops = (typeof body.stop === 'string' ? [body.stop] : body.stop).filter((x) => x !== '')
    if (stops.length > 0) s.stop = stops
  }
  if (body.stop_token_ids != null) {
    s.stopTokenIds = body.stop_token_ids.map((id) => checkTokenId(id, info, 'stop_token_ids'))
  }
  set('logitBias', logitBias(body, info))
  set('responseFormat', responseFormat(body))
  return s
}

/**
 * After the engine reported the prompt size: a prompt that leaves no room, or an explicit limit
 * that does not fit beside it, is the client's error (vLLM and OpenAI answer 400 the same way).
 */
export function checkContext(
  promptTokens: number,
  maxTokens: number | undefined,
  info: ModelInfo,
  param = 'messages',
) {
  if (promptTokens >= info.nCtx || (maxTokens != null && promptTokens + maxTokens > info.nCtx)) {
    const asked = maxTokens != null ? ` + ${maxTokens} completion tokens` : ''
    throw new ApiError(
      400,
      `This model's maximum context length is ${info.nCtx} tokens. However, you requested ` +
        `${promptTokens} prompt tokens${asked}. Shorten the prompt or lower max_tokens.`,
      'invalid_request_error',
      param,
      'context_length_exceeded',
    )
  }
}

/** The prompt-building fields chat and /generate share (snake_case body -> GenerateRequest). */
export interface PromptOptionsBody {
  add_special_tokens?: boolean | null
  skip_special_tokens?: boolean | null
  add_generation_prompt?: boolean | null
  chat_template_kwargs?: Record<string, unknown> | null
  split_special_tokens?: boolean | null
}

export function toPromptOptions(body: PromptOptionsBody): Partial<GenerateRequest> {
  const out: Partial<GenerateRequest> = {}
  if (body.add_special_tokens != null) out.addSpecialTokens = body.add_special_tokens
  if (body.skip_special_tokens != null) out.skipSpecialTokens = body.skip_special_tokens
  if (body.add_generation_prompt != null) out.addGenerationPrompt = body.add_generation_prompt
  if (body.chat_template_kwargs != null) {
    const kw = Object.entries(body.chat_template_kwargs).filter(([, v]) => v != null)
    if (kw.length > 0) out.chatTemplateKwargs = Object.fromEntries(kw)
  }
  if (body.split_special_tokens != null) out.splitSpecialTokens = body.split_special_tokens
  return out
}
