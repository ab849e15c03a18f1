/**
 * TextWorker: one Bun Worker that runs text jobs off the main thread (chat template rendering, large
 * tokenize / detokenize), each with a time budget. A job that runs past its budget gets the worker
 * terminated (a template with `{% for i in range(10**9) %}` cannot be interrupted any other way); the next
 * job starts a fresh one. Started lazily: a process that never needs it never spawns it.
 */
import { ChatTemplateBudgetError, ChatTemplateError, type TemplateConfig } from '../chat/index'
import type { ChatMessage } from '../types'

export type TextJob =
  | {
      op: 'render'
      source: string
      config: TemplateConfig
      origin: string
      messages: ChatMessage[]
      addGenerationPrompt: boolean
      kwargs?: Record<string, unknown>
      maxChars: number
    }
  | {
      op: 'encode'
      dir: string
      cacheDir?: string
      text: string
      addSpecialTokens: boolean
      split: boolean
      withPieces?: boolean
      /** Reply with the JSON text of the token list instead (keeps a 1M-id stringify off the main thread). */
      json?: boolean
    }
  | { op: 'decode'; dir: string; cacheDir?: string; ids: Int32Array; skipSpecialTokens: boolean }

type Reply = { seq: number; ok: true; value: unknown } | { seq: number; ok: false; kind: string; message: string }

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: Error) => void
  timer: ReturnType<typeof setTimeout> | null
}

export class TextWorker {
  #worker: Worker | null = null
  #pending = new Map<number, Pending>()
  #seq = 0
  /** Workers terminated for running past a budget (for tests and logs). */
  restarts = 0

  /** Runs `job`; rejects after `budgetMs` (terminating the worker) with `onTimeout()`'s error. */
  run<T>(job: TextJob, budgetMs: number, onTimeout: () => Error): Promise<T> {
    const w = this.#spawn()
    const seq = ++this.#seq
    return new Promise<T>((resolve, reject) => {
      const timer =
        budgetMs > 0
          ? setTimeout(() => {
              this.#pending.delete(seq)
              this.restarts++
              this.#kill(new Error('the text worker was restarted: another job ran past its budget'))
              reject(onTimeout())
            }, budgetMs)
          : null
      this.#pending.set(seq, { resolve: resolve as (v: unknown) => void, reject, timer })
      const transfer = job.op === 'decode' ? [job.ids.buffer as ArrayBuffer] : []
      w.postMessage({ seq, job }, transfer)
      this.#idle()
    })
  }

  /** Stops the worker (pending jobs fail). Idempotent. */
  close(): void {
    this.#kill(new Error('the text worker was closed'))
  }

  #spawn(): Worker {
    if (this.#worker) return this.#worker
    // In the one-file executable the bundle sits at the root of /$bunfs and the worker entry (a second entry
    // point of `bun build --compile`, see the Makefile) keeps its repository path.
    const here = import.meta.url
    const entry = here.includes('/$bunfs/')
      ? new URL('./src/runtime/text-worker-entry.ts', here)
      : new URL('./text-worker-entry.ts', here)
    const w = new Worker(entry)
    w.onmessage = (e: MessageEvent<Reply>) => {
      const r = e.data
      const p = this.#pending.get(r.seq)
      if (!p) return
      this.#pending.delete(r.seq)
      if (p.timer) clearTimeout(p.timer)
      if (r.ok) p.resolve(r.value)
      else if (r.kind === 'template') p.reject(new ChatTemplateError(r.message))
      else if (r.kind === 'budget') p.reject(new ChatTemplateBudgetError(r.message))
      else p.reject(new Error(r.message))
      this.#idle()
    }
    w.onerror = (e) => this.#kill(new Error(`text worker failed: ${e.message}`))
    this.#worker = w
    return w
  }

  /** No job left: let the process exit even though the worker lives. */
  #idle(): void {
    if (this.#pending.size === 0) this.#worker?.unref()
    else this.#worker?.ref()
  }

  #kill(err: Error): void {
    const w = this.#worker
    this.#worker = null
    w?.terminate()
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer)
      p.reject(err)
    }
  }
}
