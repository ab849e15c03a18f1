/**
 * Incremental detokenizer for streamed generation.
 *
 * Each push decodes a sliding window of tokens twice (vLLM's prefix/read offsets): `prefix..read` is text already
 * emitted and kept only as left context, `prefix..end` is that plus the new tokens; the difference is new text.
 * Decoding through the tokenizer (not token by token) keeps every decoder rule of the tokenizer.json, e.g. the
 * leading-space Strip of HF fast tokenizers. Tokens are held back while the window ends in an unfinished UTF-8
 * sequence of byte-fallback tokens, so a valid character split across tokens is never emitted as U+FFFD, while a
 * genuinely invalid sequence is released as soon as it cannot complete (matching decode of the whole stream).
 * Work per push is bounded by the window (the previous emitted chunk plus held tokens), not the stream length.
 */

import type { Tokenizer } from '../tokenizer/index'

export class StreamDecoder {
  private window: number[] = [] // context tokens (already emitted) followed by pending tokens
  private context = 0 // how many leading window tokens were already emitted
  private readonly opts: { skipSpecialTokens: boolean }

  constructor(
    private readonly tokenizer: Tokenizer,
    opts: { skipSpecialTokens?: boolean } = {},
  ) {
    this.opts = { skipSpecialTokens: opts.skipSpecialTokens ?? true }
  }

  /** Adds tokens; returns the text that became final (possibly ''). */
  push(ids: number[]): string {
    for (const id of ids) this.window.push(id)
    if (this.endsUnfinished()) return ''
    const before = this.tokenizer.decode(this.window.slice(0, this.context), this.opts)
    const after = this.tokenizer.decode(this.window, this.opts)
    if (after.length <= before.length) return ''
    // The emitted tokens become the left context of the next window; older tokens are dropped.
    this.window = this.window.slice(this.context)
    this.context = this.window.length
    return after.slice(before.length)
  }

  /** Ends the stream: returns everything held back (an unfinished byte sequence becomes U+FFFD, as in decode). */
  flush(): string {
    const before = this.tokenizer.decode(this.window.slice(0, this.context), this.opts)
    const after = this.tokenizer.decode(this.window, this.opts)
    this.window = []
    this.context = 0
    return after.slice(before.length)
  }

  /** True when the trailing byte-fallback tokens are a UTF-8 lead byte still missing continuation bytes. */
  private endsUnfinished(): boolean {
    let continuation = 0
    // A byte-fallback token is the only kind whose bytes are a single non-ASCII byte; pieces are valid UTF-8.
    for (let i = this.window.length - 1; i >= 0 && continuation < 4; i--) {
      const id = this.window[i]! // i is within the window by the loop bounds
      // Skipped special tokens vanish before decoding, so bytes on both sides of one still join.
      if (this.opts.skipSpecialTokens && this.tokenizer.specialIds.has(id)) continue
      const bytes = this.tokenizer.tokenBytes(id)
      const b = bytes.length === 1 ? bytes[0] : undefined
      if (b === undefined || b < 0x80) return false
      if (b < 0xc0) {
        continuation++
        continue
      }
      const need = b >= 0xf0 ? 3 : b >= 0xe0 ? 2 : 1
      return continuation < need
    }
    return false
  }

  /** Tokens in the decode window; tests use it to check per-push work stays bounded. */
  get windowSize(): number {
    return this.window.length
  }
}
