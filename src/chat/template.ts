/**
 * Chat templates: a tokenizer_config.json `chat_template` rendered with @huggingface/jinja the way transformers'
 * apply_chat_template does (messages, add_generation_prompt, the special-token strings, extra kwargs).
 * MiniCPM4's template has no BOS; the runtime adds it by encoding the prompt with addSpecialTokens (MINICPM4.md §5).
 */

import { join } from 'node:path'
import { Template } from '@huggingface/jinja'
import type { ChatMessage } from '../types'

export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError'
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant'])

type TokenField = string | { content: string } | null | undefined

interface TemplateConfig {
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

export class ChatTemplate {
  private compiled: Template | null = null
  private readonly specials: Record<string, string>

  /** `source` null means the model has no chat template: render() then throws a clear error. */
  constructor(
    readonly source: string | null,
    config: TemplateConfig = {},
    private readonly origin = 'this model',
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
    const vars = {
      ...this.specials,
      ...(opts.kwargs ?? {}),
      messages: messages.map(normalizeMessage),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    }
    try {
      this.compiled ??= new Template(this.source)
    } catch (e) {
      throw new ChatTemplateError(`chat template of ${this.origin} could not be parsed: ${(e as Error).message}`)
    }
    try {
      return this.compiled.render(vars)
    } catch (e) {
      throw new ChatTemplateError(`chat template raised: ${(e as Error).message}`)
    }
  }
}
