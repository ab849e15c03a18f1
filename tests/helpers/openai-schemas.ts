/**
 * The official OpenAI response schemas (fixtures/openai/openai_schemas.json, from openai-openapi) as zod
 * validators, so route tests check our bodies and SSE chunks against the real spec.
 */
import { z } from 'zod'

const FIXTURE = process.env.MINICPM_FIXTURES
  ? `${process.env.MINICPM_FIXTURES}/openai/openai_schemas.json`
  : `${import.meta.dir}/../../../shared/fixtures/openai/openai_schemas.json`

export type SchemaName =
  | 'CreateChatCompletionResponse'
  | 'CreateChatCompletionStreamResponse'
  | 'CreateCompletionResponse'
  | 'CreateCompletionStreamChunk'
  | 'ListModelsResponse'
  | 'ErrorResponse'

const raw = (await Bun.file(FIXTURE).json()) as Record<string, unknown>
const cache = new Map<SchemaName, z.ZodType>()

/** Issues of `value` against the named schema, as 'path: message' lines (empty when valid). */
export function schemaIssues(name: SchemaName, value: unknown): string[] {
  let s = cache.get(name)
  if (!s) {
    s = z.fromJSONSchema(raw[name] as Parameters<typeof z.fromJSONSchema>[0])
    cache.set(name, s)
  }
  const r = s.safeParse(value)
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`)
}
