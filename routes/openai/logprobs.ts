/**
 * @module
 * Token logprobs in the two OpenAI shapes: chat (`content[{token, logprob, bytes, top_logprobs}]`)
 * and legacy completions (`{tokens, token_logprobs, top_logprobs, text_offset}`).
 */

import type { TokenLogprob } from '../../src/types.ts'

export interface ChatTokenLogprob {
  token: string
  logprob: number
  bytes: number[]
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>
}

const enc = new TextEncoder()
const bytes = (s: string) => Array.from(enc.encode(s))
// JSON cannot carry -Infinity; OpenAI clients expect a number, and -9999 is what the API sends.
const finite = (lp: number) => (Number.isFinite(lp) ? lp : -9999)

/** Chat shape; `top` is cut to what the client asked for. */
export function chatLogprobs(lps: TokenLogprob[], top: number): ChatTokenLogprob[] {
  return lps.map((lp) => ({
    token: lp.text,
    logprob: finite(lp.logprob),
    bytes: bytes(lp.text),
    top_logprobs: lp.top.slice(0, top).map((t) => ({
      token: t.text,
      logprob: finite(t.logprob),
      bytes: bytes(t.text),
    })),
  }))
}

export interface LegacyLogprobs {
  tokens: string[]
  token_logprobs: number[]
  top_logprobs: Array<Record<string, number>>
  text_offset: number[]
}

/** Accumulates the legacy shape; offsets count characters from the start of the choice's text. */
export class LegacyLogprobBuilder {
  readonly value: LegacyLogprobs = {
    tokens: [],
    token_logprobs: [],
    top_logprobs: [],
    text_offset: [],
  }

  constructor(
    private offset: number,
    private top: number,
  ) {}

  /** Appends `lps` and returns just the part added (for one stream chunk). */
  push(lps: TokenLogprob[]): LegacyLogprobs {
    const part: LegacyLogprobs = {
      tokens: [],
      token_logprobs: [],
      top_logprobs: [],
      text_offset: [],
    }
    for (const lp of lps) {
      const top: Record<string, number> = {}
      for (const t of lp.top.slice(0, this.top)) top[t.text] = finite(t.logprob)
      for (const target of [part, this.value]) {
        target.tokens.push(lp.text)
        target.token_logprobs.push(finite(lp.logprob))
        target.top_logprobs.push(top)
        target.text_offset.push(this.offset)
      }
      this.offset += lp.text.length
    }
    return part
  }
}
