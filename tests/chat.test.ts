/**
 * Chat template tests: golden renders of the real MiniCPM4 template (shared/fixtures/minicpm-tokenizer),
 * message normalization, kwargs, errors, and the prompt ids with BOS of the MINICPM4.md §5 test vector.
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { ChatTemplate, ChatTemplateError } from '../src/chat/index'
import { loadTokenizer, type Tokenizer } from '../src/tokenizer/index'
import type { ChatMessage } from '../src/types'

// Loading and converting the real tokenizer takes seconds on a busy machine; Bun's default is 5 s.
setDefaultTimeout(60_000)
const FIXTURES = join(import.meta.dir, '../../shared/fixtures/minicpm-tokenizer')

let chat: ChatTemplate
let tok: Tokenizer

beforeAll(async () => {
  chat = await ChatTemplate.fromDir(FIXTURES)
  tok = await loadTokenizer(FIXTURES)
})

function dirWithConfig(config: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'chat-tpl-'))
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config))
  return dir
}

describe('MiniCPM4 chat template', () => {
  const conversation: ChatMessage[] = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello.' },
    { role: 'user', content: 'Again' },
  ]

  test('system/user/assistant with the generation prompt', () => {
    expect(chat.render(conversation, { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n' +
        '<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n',
    )
  })

  test('without the generation prompt (the default, as in transformers)', () => {
    const want = '<|im_start|>user\nHi<|im_end|>\n'
    expect(chat.render([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false })).toBe(want)
    expect(chat.render([{ role: 'user', content: 'Hi' }])).toBe(want)
  })

  test('text parts are concatenated and developer renders as system', () => {
    const got = chat.render([
      { role: 'developer', content: 'Rules.' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'Write ' },
          { type: 'text', text: 'a poem.' },
        ],
      },
    ])
    expect(got).toBe('<|im_start|>system\nRules.<|im_end|>\n<|im_start|>user\nWrite a poem.<|im_end|>\n')
  })

  test('prompt ids with BOS equal the §5 spm vector', () => {
    const prompt = chat.render([{ role: 'user', content: 'Write an article about Artificial Intelligence.' }], {
      addGenerationPrompt: true,
    })
    expect(tok.encode(prompt).join(' ')).toBe(
      '1 73441 1836 5 10643 1458 4695 1835 46715 28344 72 73440 5 73441 43686 5',
    )
  })

  test('bad messages give a clear error', () => {
    expect(() => chat.render([{ role: 'tool', content: 'x' } as unknown as ChatMessage])).toThrow(
      /role 'tool' is not one of/,
    )
    expect(() => chat.render([{ role: 'user', content: [{ type: 'image_url' }] } as unknown as ChatMessage])).toThrow(
      /content\[0\] must be a text part/,
    )
    expect(() => chat.render([{ role: 'user', content: 3 } as unknown as ChatMessage])).toThrow(ChatTemplateError)
  })
})

describe('other templates', () => {
  test('extra kwargs and special-token variables reach the template', async () => {
    const t = await ChatTemplate.fromDir(
      dirWithConfig({
        bos_token: '<s>',
        eos_token: { content: '</s>' },
        chat_template:
          "{{ bos_token }}{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}{{ eos_token }}{% endfor %}" +
          '{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}',
      }),
    )
    const msgs: ChatMessage[] = [{ role: 'user', content: 'q' }]
    expect(t.render(msgs, { kwargs: { enable_thinking: false } })).toBe('<s>user:q</s>[no-think]')
    expect(t.render(msgs)).toBe('<s>user:q</s>')
    // kwargs cannot replace the messages themselves (they are keyword arguments in transformers too)
    expect(t.render(msgs, { kwargs: { messages: [] } })).toBe('<s>user:q</s>')
  })

  const loopTemplate =
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}" +
    "{{ raise_exception('first message must be system, got ' + m['role']) }}{% endif %}" +
    "{{ loop.index }}.{{ m['content'] | trim | tojson }}{% if not loop.last %},{% endif %}{% endfor %}"

  test('a template using loop and raise_exception renders', async () => {
    const t = await ChatTemplate.fromDir(dirWithConfig({ chat_template: loopTemplate }))
    const got = t.render([
      { role: 'system', content: ' s ' },
      { role: 'user', content: 'u "q"' },
    ])
    expect(got).toBe('1."s",2."u \\"q\\""')
  })

  test('raise_exception becomes a ChatTemplateError with its message', async () => {
    const t = await ChatTemplate.fromDir(dirWithConfig({ chat_template: loopTemplate }))
    expect(() => t.render([{ role: 'user', content: 'x' }])).toThrow(
      /chat template raised: first message must be system, got user/,
    )
  })

  test('a template that does not parse gives a clear error', async () => {
    const t = await ChatTemplate.fromDir(dirWithConfig({ chat_template: '{% for m in messages %}{{ m }}' }))
    expect(() => t.render([{ role: 'user', content: 'x' }])).toThrow(/chat template of .* could not be parsed/)
  })

  test('named templates pick "default"; chat_template.jinja is read when the config has none', async () => {
    const named = await ChatTemplate.fromDir(
      dirWithConfig({
        chat_template: [
          { name: 'tool_use', template: 'T' },
          { name: 'default', template: 'D' },
        ],
      }),
    )
    expect(named.render([])).toBe('D')
    const dir = dirWithConfig({})
    writeFileSync(join(dir, 'chat_template.jinja'), "{{ messages[0]['content'] }}!")
    expect((await ChatTemplate.fromDir(dir)).render([{ role: 'user', content: 'j' }])).toBe('j!')
  })

  test('a model without a chat template fails when chat is used, not when loaded', async () => {
    const t = await ChatTemplate.fromDir(dirWithConfig({ bos_token: '<s>' }))
    expect(t.available).toBe(false)
    expect(() => t.render([{ role: 'user', content: 'x' }])).toThrow(/has no chat template/)
    const empty = await ChatTemplate.fromDir(mkdtempSync(join(tmpdir(), 'chat-none-')))
    expect(() => empty.render([])).toThrow(ChatTemplateError)
  })
})
