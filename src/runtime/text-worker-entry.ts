/**
 * The text worker (see text-worker.ts): renders chat templates and runs large tokenize / detokenize jobs off
 * the main thread, so that a hostile template or a 4 MB prompt never stalls the event loop. Stateless apart
 * from its caches; the main thread terminates it when a job runs past its budget.
 */
import { ChatTemplate, ChatTemplateBudgetError, ChatTemplateError } from '../chat/index'
import { loadTokenizer, type Tokenizer } from '../tokenizer/index'
import type { TextJob } from './text-worker'

declare const self: Worker

let template: { key: string; t: ChatTemplate } | null = null
let tokenizer: { key: string; t: Promise<Tokenizer> } | null = null

function tokenizerOf(dir: string, cacheDir: string | undefined): Promise<Tokenizer> {
  const key = `${dir}\0${cacheDir}`
  if (tokenizer?.key !== key) tokenizer = { key, t: loadTokenizer(dir, { cacheDir }) }
  return tokenizer.t
}

async function run(job: TextJob): Promise<unknown> {
  switch (job.op) {
    case 'render': {
      const key = `${job.origin}\0${job.source}`
      if (template?.key !== key) template = { key, t: new ChatTemplate(job.source, job.config, job.origin) }
      const out = template.t.render(job.messages, { addGenerationPrompt: job.addGenerationPrompt, kwargs: job.kwargs })
      if (out.length > job.maxChars) {
        throw new ChatTemplateBudgetError(
          `chat template of ${job.origin} produced ${out.length} characters, over its budget of ${job.maxChars}`,
        )
      }
      return out
    }
    case 'encode': {
      const t = await tokenizerOf(job.dir, job.cacheDir)
      const o = { addSpecialTokens: job.addSpecialTokens }
      const ids = Int32Array.from(job.split ? t.encodeText(job.text, o) : t.encode(job.text, o))
      const pieces = job.withPieces ? Array.from(ids, (id) => t.tokenText(id)) : undefined
      if (job.json) {
        const list = pieces ? Array.from(ids, (id, i) => ({ id, piece: pieces[i] })) : Array.from(ids)
        return { count: ids.length, json: JSON.stringify(list) }
      }
      return { ids, pieces }
    }
    case 'decode': {
      const t = await tokenizerOf(job.dir, job.cacheDir)
      return t.decode(Array.from(job.ids), { skipSpecialTokens: job.skipSpecialTokens })
    }
  }
}

self.onmessage = async (e: MessageEvent<{ seq: number; job: TextJob }>) => {
  const { seq, job } = e.data
  try {
    const value = await run(job)
    const transfer: ArrayBuffer[] =
      value && typeof value === 'object' && 'ids' in value ? [(value as { ids: Int32Array }).ids.buffer as ArrayBuffer] : []
    self.postMessage({ seq, ok: true, value }, transfer)
  } catch (err) {
    const kind =
      err instanceof ChatTemplateError ? 'template' : err instanceof ChatTemplateBudgetError ? 'budget' : 'error'
    self.postMessage({ seq, ok: false, kind, message: (err as Error)?.message ?? String(err) })
  }
}
