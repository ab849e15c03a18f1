/**
 * One constrained request's grammar state (ConstrainedDecoder) and the figures of all of them (grammarStats):
 * accept each sampled token, give the next mask, and keep the document closable within the token budget
 * (grammar-close.ts). GrammarService (grammar.ts) makes decoders.
 */
import type { GrammarMatcher } from '@mlc-ai/web-xgrammar'
import { closingText, type PieceIndex } from './grammar-close'

/**
 * Figures for the closing measurements: grammar masks and their time; closing-path searches (needUs) and the
 * steps whose mask was one forced token; closings that started with too little budget left (should stay 0).
 */
export const grammarStats = {
  masks: 0,
  maskUs: 0,
  maxMaskUs: 0,
  compiles: 0,
  compileMs: 0,
  cacheHits: 0,
  needs: 0,
  needUs: 0,
  forced: 0,
  closings: 0,
  closingsShort: 0,
}

/**
 * How many tokens one sampled token may add to the closing need before the decoder looks again (raised per
 * request when a bigger jump is seen). A token that opens a deep structure at once can exceed it; JSON pieces in
 * the vocabulary are a few characters long.
 */
const NEED_MARGIN = 16

/**
 * One request's grammar state: accept each sampled token, then give the next mask.
 *
 * Budget: while the tokens left exceed the closing need (the tokens of the shortest completion plus the stop
 * token) by more than a margin, the mask is the grammar's. The need is searched for only when the budget could be
 * near it (it grows by at most the margin per token), so most steps cost one mask. Once the budget is within the
 * margin, the decoder switches to closing: each mask holds one token, the next of the shortest completion, then
 * the stop token; the output ends as a valid document within max_tokens.
 */
export class ConstrainedDecoder {
  #used = 0
  #closing: number[] | null = null
  #need: number
  #since = 0
  #margin = NEED_MARGIN
  #forced: Uint32Array
  #forcedBit = -1
  /** The shortest completion from the start (null when none was found), and its tokens with the stop token. */
  readonly shortest: string | null
  readonly minTokens: number | null

  constructor(
    private readonly m: GrammarMatcher,
    private readonly nVocab: number,
    private readonly pieces: PieceIndex,
    private readonly stopId: number,
    private readonly budget: number,
    /** Tokens the output may ever hold (JSON: none with a raw control character), ANDed into each mask. */
    private readonly allowed: Uint32Array | null = null,
  ) {
    this.#forced = new Uint32Array((nVocab + 31) >> 5)
    this.shortest = stopId >= 0 ? closingText(m, stopId) : null
    this.minTokens = this.shortest === null ? null : pieces.spell(this.shortest).length + 1
    this.#need = this.minTokens ?? 0
  }

  /** False when the token breaks the grammar (cannot happen when the engine applied the mask). */
  accept(token: number): boolean {
    this.#used++
    this.#since++
    if (this.#closing) {
      if (this.#closing[0] === token) this.#closing.shift()
      else this.#closing = null // the engine sampled off the forced path: search again
    }
    return this.m.acceptToken(token)
  }

  get terminated(): boolean {
    return this.m.isTerminated()
  }

  /** True once the decoder forces the shortest completion. */
  get closing(): boolean {
    return this.#closing !== null
  }

  /** The closing path from here (tokens, stop token last), or null when the search finds none. */
  #path(): number[] | null {
    const t0 = performance.now()
    const text = closingText(this.m, this.stopId)
    grammarStats.needs++
    grammarStats.needUs += (performance.now() - t0) * 1000
    return text === null ? null : [...this.pieces.spell(text), this.stopId]
  }

  #force(token: number): Uint32Array {
    if (this.#forcedBit >= 0) this.#forced[this.#forcedBit >> 5] = 0
    this.#forced[token >> 5] = (1 << (token & 31)) >>> 0
    this.#forcedBit = token
    grammarStats.forced++
    return this.#forced
  }

  async nextMask(): Promise<Uint32Array> {
    const left = this.budget - this.#used
    if (this.#closing === null && this.stopId >= 0 && left <= this.#need + (this.#since + 1) * this.#margin) {
      const path = this.#path()
      if (path) {
        // A jump seen between two consecutive searches widens the margin for the rest of the request.
        if (this.#since === 1) this.#margin = Math.max(this.#margin, 2 * (path.length - this.#need + 1))
        this.#need = path.length
        this.#since = 0
        if (left <= path.length + this.#margin) {
          this.#closing = path
          grammarStats.closings++
          if (left < path.length) grammarStats.closingsShort++
        }
      }
    }
    if (this.#closing !== null && this.#closing.length > 0) return this.#force(this.#closing[0]!)
    const t0 = performance.now()
    const bits = await this.m.getNextTokenBitmask()
    const us = (performance.now() - t0) * 1000
    grammarStats.masks++
    grammarStats.maskUs += us
    if (us > grammarStats.maxMaskUs) grammarStats.maxMaskUs = us
    const words = (this.nVocab + 31) >> 5
    const mask = new Uint32Array(bits.buffer, bits.byteOffset, words)
    if (this.allowed) for (let i = 0; i < words; i++) mask[i]! &= this.allowed[i]!
    return mask
  }

  dispose(): void {
    this.m.dispose()
  }
}
