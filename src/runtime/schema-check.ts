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
  if (typeof schema === 'boolean') return
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new UnsupportedSchemaError(`${path}: a schema must be an object or a boolean`, path)
  }
  for (const [k, v] of Object.entries(schema)) {
    const at = `${path}/${k}`
    if (!SUPPORTED.has(k)) {
      throw new UnsupportedSchemaError(
        `JSON schema keyword '${k}' (at ${at}) is not supported by this server's constrained decoder; ` +
          `supported: ${[...SUPPORTED].join(', ')}`,
        k,
      )
    }
    if (k === '$ref' && (typeof v !== 'string' || !v.startsWith('#'))) {
      throw new UnsupportedSchemaError(`'$ref' (at ${at}) must point inside the schema ('#/...')`, k)
    }
    if (k === 'type') {
      for (const t of Array.isArray(v) ? v : [v]) {
        if (typeof t !== 'string' || !TYPES.has(t)) throw new UnsupportedSchemaError(`unknown type ${JSON.stringify(t)} at ${at}`, k)
      }
    }
    if (SCHEMA_MAPS.has(k) && v && typeof v === 'object') {
      for (const [name, sub] of Object.entries(v)) checkSchema(sub, `${at}/${name}`)
    } else if (SCHEMA_LISTS.has(k) && Array.isArray(v)) {
      v.forEach((sub, i) => checkSchema(sub, `${at}/${i}`))
    } else if ((k === 'items' || k === 'additionalProperties') && typeof v === 'object') {
      checkSchema(v, at)
    }
  }
}

