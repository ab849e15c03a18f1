/**
 * The JSON schemas the constrained-decoding suites run (grammar.test.ts, grammar-budget.test.ts): [name, schema,
 * strict]. Nested objects, arrays with bounds, enums, anyOf, required/optional, patterns, $ref, and free strings.
 */
export type Schema = Record<string, unknown>
export const str = (maxLength = 12): Schema => ({ type: 'string', maxLength })

// Most strings carry maxLength, enums or patterns; the last entries have free strings, which a random model
// never closes by itself among 73K tokens: the budget-aware closing mode ends them within max_tokens.
export const SCHEMAS: Array<[string, Schema, boolean]> = [
  ['integer', { type: 'integer' }, true],
  ['number', { type: 'number' }, true],
  ['boolean', { type: 'boolean' }, true],
  ['null', { type: 'null' }, true],
  ['bounded string', str(8), true],
  ['enum', { enum: ['red', 'green', 'blue', 42, null] }, true],
  ['const', { const: { ok: true } }, true],
  ['int range', { type: 'integer', minimum: -5, maximum: 300 }, true],
  ['pattern', { type: 'string', pattern: '^[a-z]{2,5}-[0-9]{3}$' }, true],
  ['flat object', { type: 'object', properties: { a: { type: 'integer' }, b: str() }, required: ['a', 'b'] }, true],
  [
    'optional fields',
    { type: 'object', properties: { id: { type: 'integer' }, note: str(), flag: { type: 'boolean' } }, required: ['id'], additionalProperties: false },
    false,
  ],
  ['array bounds', { type: 'array', items: { type: 'integer' }, minItems: 2, maxItems: 4 }, true],
  ['array of enums', { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 5 }, true],
  ['tuple', { type: 'array', prefixItems: [{ type: 'integer' }, str(4), { type: 'boolean' }], items: false }, true],
  [
    'nested objects',
    {
      type: 'object',
      properties: {
        user: { type: 'object', properties: { name: str(), age: { type: 'integer', minimum: 0, maximum: 150 } }, required: ['name', 'age'] },
        tags: { type: 'array', items: str(6), maxItems: 3 },
      },
      required: ['user', 'tags'],
    },
    true,
  ],
  ['anyOf scalar', { anyOf: [{ type: 'integer' }, { type: 'boolean' }, { type: 'null' }] }, true],
  [
    'anyOf objects',
    {
      anyOf: [
        { type: 'object', properties: { kind: { const: 'circle' }, r: { type: 'number' } }, required: ['kind', 'r'] },
        { type: 'object', properties: { kind: { const: 'square' }, side: { type: 'integer' } }, required: ['kind', 'side'] },
      ],
    },
    true,
  ],
  ['nullable type list', { type: 'object', properties: { v: { type: ['integer', 'null'] } }, required: ['v'] }, true],
  [
    '$ref and $defs',
    {
      type: 'object',
      properties: { home: { $ref: '#/$defs/addr' }, work: { $ref: '#/$defs/addr' } },
      required: ['home', 'work'],
      $defs: { addr: { type: 'object', properties: { city: str(), zip: { type: 'string', pattern: '^[0-9]{5}$' } }, required: ['city', 'zip'] } },
    },
    true,
  ],
  [
    'array of objects',
    {
      type: 'array',
      items: { type: 'object', properties: { x: { type: 'integer' }, y: { type: 'integer' } }, required: ['x', 'y'] },
      minItems: 1,
      maxItems: 3,
    },
    true,
  ],
  ['string length range', { type: 'string', minLength: 3, maxLength: 6 }, true],
  ['deep nesting', { type: 'object', properties: { a: { type: 'object', properties: { b: { type: 'object', properties: { c: { type: 'array', items: { type: 'boolean' }, maxItems: 2 } }, required: ['c'] } }, required: ['b'] } }, required: ['a'] }, true],
  ['number range', { type: 'number', minimum: 0, maximum: 1 }, true],
  [
    'enum in object',
    { type: 'object', properties: { level: { enum: ['low', 'mid', 'high'] }, score: { type: 'integer', minimum: 0, maximum: 10 } }, required: ['level', 'score'] },
    false,
  ],
  // XGrammar bounds only a decimal's integer part, so bounded numbers come out as whole numbers in range.
  ['decimal bounds', { type: 'number', minimum: 0.5, exclusiveMaximum: 3.5 }, true],
  ['exclusive bound in object', { type: 'object', properties: { p: { type: 'number', exclusiveMinimum: 0, maximum: 100 } }, required: ['p'] }, true],
  ['free string', { type: 'string' }, true],
  [
    'free strings, optional keys',
    { type: 'object', properties: { title: { type: 'string' }, body: { type: 'string' }, n: { type: 'number' } }, required: ['title'] },
    false,
  ],
]

export const UNSUPPORTED: Array<[string, Schema]> = [
  ['not', { not: { type: 'string' } }],
  ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }],
  ['if', { type: 'object', if: { properties: { a: { const: 1 } } }, then: { required: ['b'] } }],
  ['multipleOf', { type: 'object', properties: { n: { type: 'integer', multipleOf: 3 } } }],
  ['patternProperties', { type: 'object', patternProperties: { '^x': { type: 'integer' } } }],
]

