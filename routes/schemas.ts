/**
 * @module
 * Request schemas (zod v4). Objects are loose: vendor extras and harmless OpenAI fields (user, store,
 * metadata, service_tier, ...) pass through unvalidated. Fields we cannot honour are rejected by the
 * routes with a message, not here, so that the message can say why.
 */

import { z } from 'zod'
import { badRequest } from './errors.ts'

/** The engine's sampling fields are int32 (seed: uint64, kept to what a double holds exactly). */
export const INT32_MAX = 2 ** 31 - 1
const int32 = (min: number) => z.number().int().min(min).max(INT32_MAX)
const tokenId = () => int32(0)

/** Sampling fields shared by chat, completions and the native /generate (OpenAI + vLLM/llama.cpp names). */
export const samplingFields = {
  model: z.string().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  top_k: int32(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  penalty_last_n: int32(-1).nullish(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullish(),
  max_tokens: int32(1).nullish(),
  stop: z
    .union([z.string(), z.array(z.string()).max(16)], {
      error: 'must be a string or an array of up to 16 strings',
    })
    .nullish(),
  stop_token_ids: z.array(tokenId()).nullish(),
  response_format: z
    .looseObject({
      type: z.enum(['text', 'json_object', 'json_schema']),
      json_schema: z
        .looseObject({ name: z.string().optional(), schema: z.unknown().optional(), strict: z.boolean().nullish() })
        .optional(),
    })
    .nullish(),
  logit_bias: z
    .union(
      [
        z.record(z.string(), z.number().min(-100).max(100)),
        z.array(z.tuple([tokenId(), z.number().min(-100).max(100)])),
      ],
      { error: 'must map token ids to biases in [-100, 100]' },
    )
    .nullish(),
  ignore_eos: z.boolean().nullish(),
  speculative: z.boolean().nullish(),
  skip_special_tokens: z.boolean().nullish(),
  add_special_tokens: z.boolean().nullish(),
  n: int32(1).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
}

/**
 * chat_template_kwargs: only known keys with typed values. Anything else (tools, raise_exception, range,
 * namespace, ...) is a 400: it would reach the template as a variable.
 */
const chatTemplateKwargs = z
  .strictObject(
    { enable_thinking: z.boolean().nullish() },
    { error: (i) => (i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.map((k) => `'${k}'`).join(', ')}; allowed: enable_thinking` : undefined) },
  )
  .nullish()

const textPart = z.looseObject({ type: z.string(), text: z.string().optional() })

export const chatMessage = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool', 'function']),
  content: z
    .union([z.string(), z.array(textPart), z.null()], {
      error: 'must be a string or an array of content parts',
    })
    .optional(),
  name: z.string().nullish(),
})

export const chatRequest = z.looseObject({
  ...samplingFields,
  messages: z.array(chatMessage).min(1, 'messages must contain at least one message'),
  max_completion_tokens: int32(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  tools: z.array(z.unknown()).nullish(),
  tool_choice: z.unknown().optional(),
  chat_template_kwargs: chatTemplateKwargs,
  add_generation_prompt: z.boolean().nullish(),
})
export type ChatRequest = z.infer<typeof chatRequest>

const tokenIds = z.array(z.number().int())

export const completionRequest = z.looseObject({
  ...samplingFields,
  prompt: z.union([z.string(), z.array(z.string()), tokenIds, z.array(tokenIds)], {
    error:
      'must be a string, an array of strings, an array of token ids or an array of token id arrays',
  }),
  echo: z.boolean().nullish(),
  logprobs: z.number().int().min(0).max(20).nullish(),
  suffix: z.string().nullish(),
  split_special_tokens: z.boolean().nullish(),
  best_of: int32(1).nullish(),
})
export type CompletionRequest = z.infer<typeof completionRequest>

export const generateRequest = z.looseObject({
  ...samplingFields,
  prompt: z
    .union([z.string(), tokenIds], { error: 'must be a string or an array of token ids' })
    .optional(),
  messages: z.array(chatMessage).min(1).optional(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  chat_template_kwargs: chatTemplateKwargs,
  add_generation_prompt: z.boolean().nullish(),
  split_special_tokens: z.boolean().nullish(),
  format: z.enum(['sse', 'ndjson', 'json']).nullish(),
})
export type NativeGenerateRequest = z.infer<typeof generateRequest>

export const tokenizeRequest = z.looseObject({
  content: z.string().optional(),
  prompt: z.string().optional(),
  add_special: z.boolean().nullish(),
  with_pieces: z.boolean().nullish(),
  model: z.string().nullish(),
})

/** Most ids /detokenize takes (checked before the per-id validation, which would itself stall). */
export const DETOKENIZE_MAX_IDS = 1 << 20

export const detokenizeRequest = z.looseObject({
  tokens: tokenIds,
  model: z.string().nullish(),
})

/** Reads a JSON body and validates it; malformed JSON and schema failures become a 400 naming the field. */
export async function parseBody<T extends z.ZodType>(
  req: Request,
  schema: T,
  precheck?: (raw: Record<string, unknown>) => void,
): Promise<z.infer<T>> {
  let raw: unknown
  try {
    raw = await req.json()
  } catch (e) {
    throw badRequest(
      `request body is not valid JSON: ${(e as Error).message}`,
      null,
      'invalid_json',
    )
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw badRequest('request body must be a JSON object', null, 'invalid_json')
  }
  precheck?.(raw as Record<string, unknown>)
  const r = schema.safeParse(raw)
  if (!r.success) {
    const issue = r.error.issues[0]!
    const param = issue.path.map(String).join('.') || null
    throw badRequest(param ? `${param}: ${issue.message}` : issue.message, param, 'invalid_value')
  }
  return r.data
}
