/**
 * Chat templates: a tokenizer_config.json `chat_template` rendered with @huggingface/jinja the way transformers'
 * apply_chat_template does (messages, add_generation_prompt, the special-token strings, extra kwargs).
 * MiniCPM4's template has no BOS; the runtime adds it by encoding the prompt with addSpecialTokens (MINICPM4.md §5).
 */

import { join } from 'node:path'
import { Environment, Interpreter, Template } from '@huggingface/jinja'
import type { ChatMessage } from '../types'

/** The request's fault (bad messages, a kwarg, the template's raise_exception): an HTTP 400. */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError'
  readonly statusName = 'invalid_argument'
}

/** The template's fault (it ran past its time or output budget): a server error, not the request's. */
export class ChatTemplateBudgetError extends Error {
  override name = 'ChatTemplateBudgetError'
}

/** Most elements one `range()` call of a template may make (range(1000000000) would exhaust memory). */
export const TEMPLATE_RANGE_MAX = 100_000

/** Names a request's chat_template_kwargs may not set: the template's own inputs and helpers. */
const RESERVED_KWARGS = new Set([
  'messages',
  'add_generation_prompt',
  'bos_token',
  'eos_token',
  'unk_token',
  'pad_token',
  'raise_exception',
  'strftime_now',
  'range',
  'namespace',
  'tools',
  'documents',
  'cycler',
  'joiner',
  'lipsum',
  'dict',
])

function strftimeNow(format: string): string {
  const d = new Date()
  const p2 = (n: number) => String(n).padStart(2, '0')
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
  const f: Record<string, string> = {
    d: p2(d.getDate()),
    m: p2(d.getMonth() + 1),
    Y: String(d.getFullYear()),
    y: p2(d.getFullYear() % 100),
    H: p2(d.getHours()),
    M: p2(d.getMinutes()),
    S: p2(d.getSeconds()),
    b: months[d.getMonth()]!,
    B: d.toLocaleString('en-US', { month: 'long' }),
    '%': '%',
  }
  return String(format).replace(/%([a-zA-Z%])/g, (m, c: string) => f[c] ?? m)
}

function raiseException(message: unknown): never {
  throw new ChatTemplateError(`chat template raised: ${String(message)}`)
}

function boundedRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start]
  if (![start, stop, step].every(Number.isInteger)) throw new ChatTemplateError('range() takes integers')
  if (step === 0) throw new ChatTemplateError('range() step must not be zero')
  const n = Math.max(0, Math.ceil((stop - start) / step))
  if (n > TEMPLATE_RANGE_MAX) {
    throw new ChatTemplateBudgetError(`range() of ${n} elements exceeds the template budget of ${TEMPLATE_RANGE_MAX}`)
  }
  return Array.from({ length: n }, (_, i) => start + i * step)
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant'])

type TokenField = string | { content: string } | null | undefined

export interface TemplateConfig {
  chat_template?: string | Array<{ name: string; template: string }>
  bos_token?: TokenField
  eos_token?: TokenField
  unk_token?: TokenField
  pad_token?: TokenField
}

function tokenString(t: TokenField): string {
  return t == null ? '' : typeof t === 'string' ? t : t.content
}

/** Validates one message and flattens text parts; developer is rendered as system (OpenAI's newer name). */
function normalizeMessage(m: ChatMessage, i: number): Record<string, unknown> {
  if (m === null || typeof m !== 'object') throw new ChatTemplateError(`messages[${i}] is not an object`)
  if (!ROLES.has(m.role)) {
    throw new ChatTemplateError(
      `messages[${i}].role '${String(m.role)}' is not one of system, developer, user, assistant`,
    )
  }
  let content: string
  if (typeof m.content === 'string') content = m.content
  else if (Array.isArray(m.content)) {
    content = m.content
      .map((p, j) => {
        if (p?.type !== 'text' || typeof p.text !== 'string') {
          throw new ChatTemplateError(`messages[${i}].content[${j}] must be a text part ({ type: 'text', text })`)
        }
        return p.text
      })
      .join('')
  } else throw new ChatTemplateError(`messages[${i}].content must be a string or an array of text parts`)
  return { ...m, role: m.role === 'developer' ? 'system' : m.role, content }
}

/** What @huggingface/jinja's Template.render() declares, with range() bounded and errors typed. */
const GLOBALS: Record<string, unknown> = {
  false: false,
  true: true,
  none: null,
  False: false,
  True: true,
  None: null,
  raise_exception: raiseException,
  range: boundedRange,
  strftime_now: strftimeNow,
}

export class ChatTemplate {
  private compiled: Template | null = null
  private readonly specials: Record<string, string>

  /** `source` null means the model has no chat template: render() then throws a clear error. */
  constructor(
    readonly source: string | null,
    readonly config: TemplateConfig = {},
    readonly origin = 'this model',
  ) {
    this.specials = {
      bos_token: tokenString(config.bos_token),
      eos_token: tokenString(config.eos_token),
      unk_token: tokenString(config.unk_token),
      pad_token: tokenString(config.pad_token),
    }
  }

  /** Reads tokenizer_config.json (or chat_template.jinja, which newer checkpoints ship instead). */
  static async fromDir(dir: string): Promise<ChatTemplate> {
    const cfgFile = Bun.file(join(dir, 'tokenizer_config.json'))
    let config: TemplateConfig = {}
    if (await cfgFile.exists()) {
      try {
        config = await cfgFile.json()
      } catch (e) {
        throw new ChatTemplateError(`${join(dir, 'tokenizer_config.json')}: invalid JSON (${(e as Error).message})`)
      }
    }
    let source: string | null = null
    const t = config.chat_template
    if (typeof t === 'string') source = t
    else if (Array.isArray(t)) source = t.find((x) => x.name === 'default')?.template ?? null
    const jinja = Bun.file(join(dir, 'chat_template.jinja'))
    if (source === null && (await jinja.exists())) source = await jinja.text()
    return new ChatTemplate(source, config, dir)
  }

  get available(): boolean {
    return this.source !== null
  }

  render(
    messages: ChatMessage[],
    opts: { addGenerationPrompt?: boolean; kwargs?: Record<string, unknown> } = {},
  ): string {
    if (this.source === null) {
      throw new ChatTemplateError(
        `${this.origin} has no chat template (tokenizer_config.json chat_template); use a plain prompt`,
      )
    }
    if (!Array.isArray(messages)) throw new ChatTemplateError('messages must be an array')
    // kwargs first: nothing a caller passes can replace the template's inputs or its helpers (those keys are
    // dropped, as transformers treats them; the HTTP layer refuses any key it does not know).
    const vars = {
      ...Object.fromEntries(Object.entries(opts.kwargs ?? {}).filter(([k]) => !RESERVED_KWARGS.has(k))),
      ...GLOBALS,
      ...this.specials,
      messages: messages.map(normalizeMessage),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    }
    try {
      this.compiled ??= new Template(this.source)
    } catch (e) {
      throw new ChatTemplateError(`chat template of ${this.origin} could not be parsed: ${(e as Error).message}`)
    }
    try {
      // Template.render() with our globals: raise_exception as a ChatTemplateError, range() bounded.
      const env = new Environment()
      for (const [k, v] of Object.entries(vars)) env.set(k, v)
      const parsed = (this.compiled as unknown as { parsed: Parameters<Interpreter['run']>[0] }).parsed
      return new Interpreter(env).run(parsed).value as string
    } catch (e) {
      if (e instanceof ChatTemplateError || e instanceof ChatTemplateBudgetError) throw e
      throw new ChatTemplateError(`chat template raised: ${(e as Error).message}`)
    }
  }
}
