/**
 * The JSON-schema keywords the constrained decoder (grammar.ts, XGrammar) enforces; everything else is refused
 * with an error naming the keyword, never silently ignored. No WebAssembly here: routes check schemas with it.
 */

/** A schema (or keyword) the grammar engine cannot honour: mapped to HTTP 400 naming the keyword. */
export class UnsupportedSchemaError extends Error {
  override name = 'UnsupportedSchemaError'
  readonly statusName = 'unsupported' // routes answer 400 unsupported_parameter
  constructor(
    message: string,
    readonly keyword: string,
  ) {
    super(message)
  }
}

/** Keywords XGrammar enforces (or that only annotate). Anything else is refused rather than ignored. */
const SUPPORTED = new Set([
  'type', 'properties', 'required', 'additionalProperties', 'items', 'prefixItems', 'minItems', 'maxItems',
  'enum', 'const', 'anyOf', 'minLength', 'maxLength', 'pattern', 'minimum', 'maximum', 'exclusiveMinimum',
  'exclusiveMaximum', '$ref', '$defs', 'definitions', 'title', 'description', 'default', 'examples', '$schema',
  '$id', '$comment', 'nullable', 'deprecated', 'readOnly', 'writeOnly',
])
/** Keywords whose value is a map of name -> schema, or a list of schemas. */
const SCHEMA_MAPS = new Set(['properties', '$defs', 'definitions'])
const SCHEMA_LISTS = new Set(['anyOf', 'prefixItems'])
const TYPES = new Set(['object', 'array', 'string', 'integer', 'number', 'boolean', 'null'])

/** Throws UnsupportedSchemaError naming the first keyword (with its JSON path) the engine cannot honour. */
export function checkSchema(schema: unknown, path = '#'): void {
  prepareSchema(schema, true, path)
}

/**
 * The schema as the grammar engine gets it. strict: the first keyword the engine cannot honour throws
 * UnsupportedSchemaError naming it. Otherwise such keywords are left out and listed as JSON pointers
 * (e.g. #/properties/email/format); the rest is enforced. A malformed schema throws either way.
 */
export function prepareSchema(schema: unknown, strict: boolean, path = '#'): { schema: unknown; ignored: string[] } {
  const ignored: string[] = []
  const out = walk(schema, path, (e, at) => {
    if (strict) throw e
    ignored.push(at)
  })
  return { schema: out, ignored }
}

/** Copies the schema, handing each unsupported keyword to `unsupported` (which throws or records it). */
function walk(schema: unknown, path: string, unsupported: (e: UnsupportedSchemaError, at: string) => void): unknown {
  if (typeof schema === 'boolean') return schema
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new UnsupportedSchemaError(`${path}: a schema must be an object or a boolean`, path)
  }
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(schema)) {
    const at = `${path}/${k}`
    if (!SUPPORTED.has(k)) {
      unsupported(
        new UnsupportedSchemaError(
          `JSON schema keyword '${k}' (at ${at}) is not supported by this server's constrained decoder; ` +
            `supported: ${[...SUPPORTED].join(', ')}; with strict: false it is ignored instead`,
          k,
        ),
        at,
      )
      continue
    }
    if (k === '$ref' && (typeof v !== 'string' || !v.startsWith('#'))) {
      unsupported(new UnsupportedSchemaError(`'$ref' (at ${at}) must point inside the schema ('#/...')`, k), at)
      continue
    }
    if (k === 'type') {
      for (const t of Array.isArray(v) ? v : [v]) {
        if (typeof t !== 'string' || !TYPES.has(t)) throw new UnsupportedSchemaError(`unknown type ${JSON.stringify(t)} at ${at}`, k)
      }
    }
    if (SCHEMA_MAPS.has(k) && v && typeof v === 'object') {
      out[k] = Object.fromEntries(Object.entries(v).map(([name, sub]) => [name, walk(sub, `${at}/${name}`, unsupported)]))
    } else if (SCHEMA_LISTS.has(k) && Array.isArray(v)) {
      out[k] = v.map((sub, i) => walk(sub, `${at}/${i}`, unsupported))
    } else if ((k === 'items' || k === 'additionalProperties') && typeof v === 'object') {
      out[k] = walk(v, at, unsupported)
    } else {
      out[k] = v
    }
  }
  return wholeNumberBounds(out, path, unsupported)
}

const BOUNDS = ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'] as const

/**
 * XGrammar bounds only the integer part of a decimal (minimum 0, maximum 1 lets 1.5 through), so a bounded
 * number is generated as a whole number in its range: still valid, and exactly enforced. A range that holds no
 * whole number cannot be enforced (its bounds are unsupported).
 */
function wholeNumberBounds(
  s: Record<string, unknown>,
  path: string,
  unsupported: (e: UnsupportedSchemaError, at: string) => void,
): Record<string, unknown> {
  const types = (Array.isArray(s.type) ? s.type : [s.type]) as unknown[]
  const numeric = types.includes('number') || types.includes('integer')
  if (!numeric || !BOUNDS.some((k) => typeof s[k] === 'number')) return s
  const num = (k: (typeof BOUNDS)[number]) => (typeof s[k] === 'number' ? (s[k] as number) : undefined)
  let lo = -Infinity
  let hi = Infinity
  if (num('minimum') !== undefined) lo = Math.ceil(num('minimum')!)
  if (num('exclusiveMinimum') !== undefined) lo = Math.max(lo, Math.floor(num('exclusiveMinimum')!) + 1)
  if (num('maximum') !== undefined) hi = Math.floor(num('maximum')!)
  if (num('exclusiveMaximum') !== undefined) hi = Math.min(hi, Math.ceil(num('exclusiveMaximum')!) - 1)
  const out: Record<string, unknown> = { ...s }
  for (const k of BOUNDS) delete out[k]
  if (lo > hi) {
    const k = BOUNDS.find((b) => typeof s[b] === 'number')!
    unsupported(
      new UnsupportedSchemaError(
        `JSON schema keyword '${k}' (at ${path}/${k}): the range holds no whole number, and this server's constrained ` +
          'decoder enforces number bounds exactly only for whole numbers; with strict: false the bounds are ignored instead',
        k,
      ),
      `${path}/${k}`,
    )
    return out
  }
  out.type = Array.isArray(s.type) ? [...new Set(types.map((t) => (t === 'number' ? 'integer' : t)))] : 'integer'
  if (lo > -Infinity) out.minimum = lo
  if (hi < Infinity) out.maximum = hi
  return out
}

/** Every 'pattern' of a schema with its path (patterns XGrammar's regex converter may refuse). */
export function patternsOf(schema: unknown, path = '#', out: Array<{ at: string; pattern: string }> = []): Array<{ at: string; pattern: string }> {
  if (schema === null || typeof schema !== 'object') return out
  if (Array.isArray(schema)) {
    schema.forEach((sub, i) => patternsOf(sub, `${path}/${i}`, out))
    return out
  }
  for (const [k, v] of Object.entries(schema)) {
    if (k === 'pattern' && typeof v === 'string') out.push({ at: `${path}/pattern`, pattern: v })
    else if (k !== 'enum' && k !== 'const' && k !== 'default' && k !== 'examples') patternsOf(v, `${path}/${k}`, out)
  }
  return out
}

/** A copy of the schema without the patterns at the given paths. */
export function withoutPatterns(schema: unknown, drop: Set<string>, path = '#'): unknown {
  if (schema === null || typeof schema !== 'object') return schema
  if (Array.isArray(schema)) return schema.map((sub, i) => withoutPatterns(sub, drop, `${path}/${i}`))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(schema)) {
    const at = `${path}/${k}`
    if (k === 'pattern' && drop.has(at)) continue
    out[k] = k === 'enum' || k === 'const' || k === 'default' || k === 'examples' ? v : withoutPatterns(v, drop, at)
  }
  return out
}
