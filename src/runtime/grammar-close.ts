/**
 * Budget-aware completion for constrained decoding: the shortest completion the grammar allows from the
 * matcher's current state, found by probing characters with accept/rollback, and the token path that writes it.
 *
 * A random or weak model can wander inside free-form JSON (an unbounded string, an open object) until max_tokens
 * cuts it mid-document. ConstrainedDecoder (grammar.ts) asks for this completion when the remaining budget gets
 * close to its length and then forces it token by token, so the output always ends as a valid document.
 */
import type { GrammarMatcher } from '@mlc-ai/web-xgrammar'
import type { Tokenizer } from '../tokenizer/index'

/**
 * Characters tried, in order, where the grammar offers a choice. Closers come first (an empty array or object is
 * the shortest value), then the one-character values (a digit), then '"' (""), the separators, and the literals by
 * length (true and null before false). Inside a free string the closing quote goes first instead, since there
 * ']' and '}' are plain content that would never end the string.
 */
const STRUCTURE = [...']}",0123456789-:tnf[{', ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_. ']
const IN_STRING = ['"', 'a', '0']
/** Last resort: any printable ASCII character, or a newline (a tool-call block has them). */
const ANY = [...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)), '\n']
/** A completion longer than this is not searched for (no JSON value this server constrains needs it). */
const MAX_CHARS = 8192

/**
 * The shortest completion (by the ordering above, not an exhaustive search) that takes the matcher from its
 * state to one where stopId is accepted; null when none is found. The matcher is left as it was.
 */
export function closingText(m: GrammarMatcher, stopId: number): string | null {
  let accepted = 0
  let out = ''
  const canStop = () => {
    if (!m.acceptToken(stopId)) return false
    m.rollBack(1)
    return true
  }
  const probe = (ch: string) => {
    if (!m._acceptString(ch)) return false
    m.rollBack(1)
    return true
  }
  const isDigit = (ch: string) => ch >= '0' && ch <= '9'
  // After a digit, can the number end here (a range may need more digits: prefer 5 over 10 for minimum 5)?
  const numberEnds = () => canStop() || [',', ']', '}', ')'].some(probe)
  // Accepts and returns the first usable character. ']' and '}' inside a bounded string (no escapes there) are
  // content, not closers: after a real closer no letter can follow.
  const tryChar = (chars: readonly string[]): string | undefined => {
    let digit: string | undefined
    for (const ch of chars) {
      if (digit !== undefined && !isDigit(ch)) break
      if (!m._acceptString(ch)) continue
      if ((ch === ']' || ch === '}') && probe('a')) {
        m.rollBack(1)
        continue
      }
      if (!isDigit(ch) || numberEnds()) return ch
      m.rollBack(1)
      digit ??= ch
    }
    if (digit !== undefined) m._acceptString(digit)
    return digit
  }
  try {
    while (!canStop()) {
      if (out.length > MAX_CHARS) return null
      const jump = m.findJumpForwardString()
      if (jump !== '' && m._acceptString(jump)) {
        accepted++
        out += jump
        continue
      }
      // A backslash is only ever valid inside a free string (it starts an escape).
      const inString = probe('\\')
      const ch = tryChar(inString ? IN_STRING : STRUCTURE) ?? tryChar(ANY)
      if (ch === undefined) return null
      accepted++
      out += ch
    }
    return out
  } finally {
    if (accepted > 0) m.rollBack(accepted)
  }
}

/** Vocabulary pieces by text, to write a given string with few tokens. */
export class PieceIndex {
  readonly #byText = new Map<string, number>()
  readonly #byByte = new Int32Array(256).fill(-1)
  #longest = 1

  constructor(tok: Tokenizer, nVocab: number) {
    const dec = new TextDecoder('utf-8', { fatal: true })
    for (let i = 0; i < Math.min(nVocab, tok.vocabSize); i++) {
      if (tok.specialIds.has(i)) continue
      const b = tok.tokenBytes(i)
      if (b.length === 1 && this.#byByte[b[0]!] === -1) this.#byByte[b[0]!] = i
      let s: string
      try {
        s = dec.decode(b)
      } catch {
        continue
      }
      if (s === '' || this.#byText.has(s)) continue
      this.#byText.set(s, i)
      if (s.length > this.#longest) this.#longest = s.length
    }
  }

  /** Token ids that spell `text` (longest piece first at each position; bytes where no piece fits). */
  spell(text: string): number[] {
    const ids: number[] = []
    let at = 0
    outer: while (at < text.length) {
      for (let n = Math.min(this.#longest, text.length - at); n > 0; n--) {
        const id = this.#byText.get(text.slice(at, at + n))
        if (id !== undefined) {
          ids.push(id)
          at += n
          continue outer
        }
      }
      const cp = text.codePointAt(at)!
      const ch = String.fromCodePoint(cp)
      for (const byte of new TextEncoder().encode(ch)) {
        const id = this.#byByte[byte]!
        if (id < 0) throw new Error(`no vocabulary token for byte 0x${byte.toString(16)}`)
        ids.push(id)
      }
      at += ch.length
    }
    return ids
  }
}
