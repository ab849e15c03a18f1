/**
 * Streaming text tests: StreamDecoder over the real MiniCPM4 tokenizers (byte-fallback splits, special tokens,
 * bounded per-push work) and StopMatcher (split stops, several stops, released partial matches, exact cuts).
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { join } from 'node:path'

import { StopMatcher, StreamDecoder } from '../src/text/index'
import { loadTokenizer, type Tokenizer } from '../src/tokenizer/index'

// Loading and converting the real tokenizer takes seconds on a busy machine; Bun's default is 5 s.
setDefaultTimeout(60_000)
const FIXTURES = join(import.meta.dir, '../../shared/fixtures/minicpm-tokenizer')

let spm: Tokenizer
let fast: Tokenizer

beforeAll(async () => {
  spm = await loadTokenizer(FIXTURES)
  fast = await loadTokenizer(join(FIXTURES, 'minicpm3'))
})

// Small deterministic PRNG (mulberry32) so chunkings are random but reproducible.
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function chunks<T>(items: T[], rand: () => number, maxLen = 4): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length;) {
    const n = 1 + Math.floor(rand() * maxLen)
    out.push(items.slice(i, i + n))
    i += n
  }
  return out
}

function stream(tok: Tokenizer, pieces: number[][], opts?: { skipSpecialTokens?: boolean }) {
  const dec = new StreamDecoder(tok, opts)
  const parts = pieces.map((p) => dec.push(p))
  parts.push(dec.flush())
  return parts
}

// First code point in [lo, hi) that the spm tokenizer can only write as byte-fallback tokens.
function byteFallbackChar(lo: number, hi: number): string {
  for (let cp = lo; cp < hi; cp++) {
    if (cp >= 0xd800 && cp < 0xe000) continue
    const ch = String.fromCodePoint(cp)
    const ids = spm.encode(ch, { addSpecialTokens: false })
    const bytes = new TextEncoder().encode(ch).length
    if (ids.length === bytes && ids.every((id) => spm.tokenBytes(id).length === 1)) return ch
  }
  throw new Error(`no byte-fallback character in U+${lo.toString(16)}..U+${hi.toString(16)}`)
}

describe('StreamDecoder', () => {
  test('multi-byte characters split across byte-fallback tokens never come out as U+FFFD', () => {
    const two = byteFallbackChar(0x80, 0x800)
    const three = byteFallbackChar(0x800, 0x10000)
    const four = byteFallbackChar(0x10000, 0x30000)
    const text = `a${two}b${three}c${four}d 😀 你好，世界 ${four}${three}${two}`
    const ids = spm.encode(text, { addSpecialTokens: false })
    const isHighByte = (bytes: Uint8Array) => bytes.length === 1 && bytes[0]! >= 0x80
    const byteTokens = ids.filter((id) => isHighByte(spm.tokenBytes(id))).length
    console.log(
      `chars ${[two, three, four].map((c) => 'U+' + c.codePointAt(0)!.toString(16)).join(' ')}, ` +
        `${ids.length} tokens, ${byteTokens} byte tokens`,
    )
    expect(byteTokens).toBe(2 * (2 + 3 + 4))
    const parts = stream(
      spm,
      ids.map((id) => [id]),
    )
    expect(parts.filter((p) => p.includes('\uFFFD'))).toEqual([])
    expect(parts.join('')).toBe(text)
    expect(parts.join('')).toBe(spm.decode(ids))
  })

  test('random chunkings give the same text as decode of the whole stream', () => {
    const text =
      '<|im_start|>user\nemoji 😀🎉 𠜎 and 中文！<|im_end|>\n' + '<|im_start|>assistant\n  two  spaces\tand tab'
    for (const tok of [spm, fast]) {
      const ids = tok.encode(text)
      for (const skip of [true, false]) {
        const want = tok.decode(ids, { skipSpecialTokens: skip })
        for (let seed = 1; seed <= 20; seed++) {
          const parts = stream(tok, chunks(ids, rng(seed)), { skipSpecialTokens: skip })
          expect(parts.join('')).toBe(want)
          expect(parts.some((p) => p.includes('\uFFFD'))).toBe(false)
        }
      }
    }
  })

  test('skipSpecialTokens (default true) drops special tokens, false keeps them', () => {
    const ids = spm.encode('<|im_start|>assistant\nHi<|im_end|>')
    expect(
      stream(
        spm,
        ids.map((id) => [id]),
      ).join(''),
    ).toBe('assistant\nHi')
    expect(
      stream(
        spm,
        ids.map((id) => [id]),
        { skipSpecialTokens: false },
      ).join(''),
    ).toBe('<s><|im_start|>assistant\nHi<|im_end|>')
  })

  test('the HF fast leading-space strip applies once, at the start of the stream', () => {
    const ids = fast.encode('Hello world', { addSpecialTokens: false })
    const parts = stream(
      fast,
      ids.map((id) => [id]),
    )
    expect(parts.join('')).toBe('Hello world')
    expect(parts.join('')).toBe(fast.decode(ids))
  })

  test('an invalid byte sequence is released like decode does; an unfinished one at flush', () => {
    // The 256 byte-fallback pieces <0x00>..<0xFF> have consecutive ids.
    const nul = spm.encode(String.fromCharCode(0), { addSpecialTokens: false })
    expect(nul).toHaveLength(1)
    const byte = (b: number) => nul[0]! + b
    expect([...spm.tokenBytes(byte(0xe4))]).toEqual([0xe4])
    const a = spm.encode('A', { addSpecialTokens: false })
    const dec = new StreamDecoder(spm)
    expect(dec.push([byte(0xe4)])).toBe('')
    expect(dec.push(a)).toBe('\uFFFDA')
    expect(dec.push([byte(0xe4), byte(0xbd)])).toBe('')
    expect(dec.flush()).toBe('\uFFFD')
    expect(spm.decode([byte(0xe4), ...a, byte(0xe4), byte(0xbd)])).toBe('\uFFFDA\uFFFD')
  })

  test('per-push work is bounded on a 20k-token stream (sliding window)', () => {
    const base = spm.encode('The quick brown fox 跳过了懒狗 😀 𠜎 jumps over 123 lazy dogs.\n', {
      addSpecialTokens: false,
    })
    const ids: number[] = []
    while (ids.length < 20000) ids.push(...base)
    let decodedTokens = 0
    const counting: Tokenizer = Object.create(spm, {
      decode: {
        value: (x: number[], o?: { skipSpecialTokens?: boolean }) => ((decodedTokens += x.length), spm.decode(x, o)),
      },
    })
    const dec = new StreamDecoder(counting)
    let maxWindow = 0
    let out = ''
    for (const id of ids) {
      out += dec.push([id])
      maxWindow = Math.max(maxWindow, dec.windowSize)
    }
    out += dec.flush()
    const perToken = decodedTokens / ids.length
    console.log(
      `stream ${ids.length} tokens: max window ${maxWindow} tokens, ${perToken.toFixed(2)} tokens decoded per token`,
    )
    expect(out).toBe(spm.decode(ids))
    expect(maxWindow).toBeLessThanOrEqual(5) // one emitted token of context + up to 4 bytes of one character
    expect(perToken).toBeLessThan(6)
  })
})

describe('StopMatcher', () => {
  const run = (stops: string[], pieces: string[]) => {
    const m = new StopMatcher(stops)
    const out: string[] = []
    let stopped = false
    for (const p of pieces) {
      const r = m.push(p)
      out.push(r.emit)
      stopped ||= r.stopped
    }
    out.push(m.flush())
    return { text: out.join(''), out, stopped }
  }

  test('a stop string split across pushes is cut exactly', () => {
    expect(run(['</answer>'], ['The answer is 4</an', 'swer> trailing'])).toEqual({
      text: 'The answer is 4',
      out: ['The answer is 4', '', ''],
      stopped: true,
    })
  })

  test('several stops: the first to complete wins, then nothing more is emitted', () => {
    expect(run(['STOP', 'END'], ['a END b STOP']).text).toBe('a ')
    expect(run(['abcd', 'bc'], ['xabcd']).text).toBe('xa')
    expect(run(['abcd', 'bc'], ['xab', 'cd']).text).toBe('xa')
    const m = new StopMatcher(['x'])
    expect(m.push('ax')).toEqual({ emit: 'a', stopped: true })
    expect(m.push('more')).toEqual({ emit: '', stopped: true })
    expect(m.flush()).toBe('')
  })

  test('a partial match that turns out not to be a stop is released', () => {
    const m = new StopMatcher(['<|end|>'])
    expect(m.push('x <|en')).toEqual({ emit: 'x ', stopped: false })
    expect(m.push('joy')).toEqual({ emit: '<|enjoy', stopped: false })
  })

  test('flush releases the held text', () => {
    const m = new StopMatcher(['###'])
    expect(m.push('abc ##')).toEqual({ emit: 'abc ', stopped: false })
    expect(m.flush()).toBe('##')
  })

  test('random splits always give the cut of the unsplit text', () => {
    const rand = rng(7)
    const alphabet = ['a', 'b', '<', '|', '>', '你', '😀', '\n']
    const stops = ['<|im_end|>', 'ab<', '😀\n你', 'bbb']
    let stoppedCount = 0
    for (let trial = 0; trial < 300; trial++) {
      let text = ''
      const len = Math.floor(rand() * 40)
      for (let i = 0; i < len; i++) text += alphabet[Math.floor(rand() * alphabet.length)]
      if (rand() < 0.5) text = text.slice(0, len / 2) + stops[trial % stops.length] + text.slice(len / 2)
      // Independent oracle: the earliest end position of any stop, cutting before the longest stop ending there.
      let want = text
      for (let e = 1; e <= text.length && want === text; e++) {
        const ending = stops.filter((s) => text.slice(0, e).endsWith(s)).sort((x, y) => y.length - x.length)
        const longest = ending[0]
        if (longest !== undefined) want = text.slice(0, e - longest.length)
      }
      const split = chunks([...text], rand, 5).map((c) => c.join(''))
      const got = run(stops, split)
      expect({ text, got: got.text }).toEqual({ text, got: want })
      if (got.stopped) stoppedCount++
    }
    console.log(`stop-matcher trials 300, stopped ${stoppedCount}`)
    expect(stoppedCount).toBeGreaterThan(100)
  })

  test('empty stop strings are ignored; non-strings are rejected', () => {
    expect(run([''], ['abc']).text).toBe('abc')
    expect(() => new StopMatcher([3 as unknown as string])).toThrow(TypeError)
  })
})
