/**
 * Tokenizer tests against the real MiniCPM4 files (shared/fixtures/minicpm-tokenizer): the SentencePiece path
 * (tokenizer.model converted in process, behaviour 1 of MINICPM4.md §5) and the HF fast path (the MiniCPM3
 * tokenizer.json of the same vocabulary, behaviour 2).
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { BPE } from '@huggingface/tokenizers'

import { MergeTable } from '../src/tokenizer/bpe'
import {
  convertSentencePiece,
  loadTokenizer,
  mergesFromVocab,
  parseSentencePieceModel,
  type Tokenizer,
} from '../src/tokenizer/index'
import { PieceType, type SpmModel } from '../src/tokenizer/sentencepiece-model'

// Loading and converting the real tokenizer takes seconds on a busy machine; Bun's default is 5 s.
setDefaultTimeout(60_000)
const FIXTURES = join(import.meta.dir, '../../shared/fixtures/minicpm-tokenizer')
const ASSETS = join(import.meta.dir, '../assets/minicpm4')
const CHAT = '<|im_start|>user\nWrite an article about Artificial Intelligence.<|im_end|>\n<|im_start|>assistant\n'

let model: SpmModel
let spm: Tokenizer
let fast: Tokenizer
let fastJson: { model: { vocab: Record<string, number>; merges: Array<string | string[]> } }

beforeAll(async () => {
  model = parseSentencePieceModel(new Uint8Array(await Bun.file(join(FIXTURES, 'tokenizer.model')).arrayBuffer()))
  spm = await loadTokenizer(FIXTURES)
  fast = await loadTokenizer(join(FIXTURES, 'minicpm3'))
  fastJson = await Bun.file(join(FIXTURES, 'minicpm3/tokenizer.json')).json()
  sourceTexts = await Promise.all(SOURCES.map((f) => Bun.file(join(import.meta.dir, f)).text()))
})

// Pieces SentencePiece never splits: control, unknown and user-defined (the slow tokenizer splits specials out too).
const isAtomic = (t: PieceType) => t === PieceType.Control || t === PieceType.Unknown || t === PieceType.UserDefined

const byteId = (b: number) =>
  model.pieces.findIndex((p) => p.piece === `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)

// Varied corpus: CJK, emoji, code, whitespace runs, digits, user-defined symbols and every added special token,
// plus this repo's tokenizer sources as a larger body of real code.
const SOURCES = ['../src/tokenizer/convert.ts', '../src/tokenizer/tokenizer.ts', 'tokenizer.test.ts']
let sourceTexts: string[] = []

function corpus(): string[] {
  const texts = [
    'Hello world',
    '你好，世界！今天天气怎么样？',
    '1234567 3.14159 2e10 0x1F 2024年',
    'emoji 😀🎉 👩‍👩‍👧 🇫🇷 and ZWJ\u200d sequences',
    'rare 𓀀 ꙮ 𠜎 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ௵',
    'def f(x):\n    return x ** 2  # square\n\tpass\n',
    'function f() { return a && b || c; } // ```js```',
    '<div class="x">...</div><!-- c --> <SEP><CLS>',
    'Ünïcödé café naïve Привет мир مرحبا こんにちは 한국어',
    '\r\n windows \r\n line endings',
    CHAT,
    '<|tool_call|>x<|execute_start|>y<|execute_end|>z<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|></s><unk>',
  ]
  for (let n = 1; n <= 24; n++)
    texts.push(`${' '.repeat(n)}x${'\n'.repeat(n % 4)}${'\t'.repeat(n % 3)}${' '.repeat(n)}`)
  return [...texts, ...sourceTexts]
}

describe('tokenizer.model reader', () => {
  test('parses the MiniCPM4 SentencePiece model (MINICPM4.md §5 facts)', () => {
    const count = (t: PieceType) => model.pieces.filter((p) => p.type === t).length
    console.log(
      `pieces ${model.pieces.length}, user-defined ${count(PieceType.UserDefined)}, byte ${count(PieceType.Byte)}`,
    )
    expect(model.pieces.length).toBe(73440)
    expect(model.trainer).toMatchObject({ modelType: 2, byteFallback: true, unkPiece: '<unk>' })
    expect(model.normalizer).toMatchObject({ name: 'identity', addDummyPrefix: false, removeExtraWhitespaces: false })
    expect(count(PieceType.UserDefined)).toBe(1086)
    expect(count(PieceType.Byte)).toBe(256)
    expect(model.pieces[5]).toEqual({ piece: '\n', score: 0, type: PieceType.UserDefined })
  })

  test('rejects truncated or non-model bytes with a clear error', () => {
    expect(() => parseSentencePieceModel(new Uint8Array([0x0a, 0x50, 0x01]))).toThrow(/invalid SentencePiece model/)
    expect(() => parseSentencePieceModel(new TextEncoder().encode('{"not": "a model"}'))).toThrow(/invalid/)
  })
})

describe('converter', () => {
  test('merges and vocab equal the HF tokenizer.json of the same vocabulary exactly', () => {
    const ours = mergesFromVocab(model.pieces).map((m) => m.join(' '))
    const theirs = fastJson.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m))
    const firstDiff = ours.findIndex((m, i) => m !== theirs[i])
    console.log(`merges ours ${ours.length}, MiniCPM3 json ${theirs.length}, first difference at ${firstDiff}`)
    expect(ours.length).toBe(theirs.length)
    expect(firstDiff).toBe(-1)
    const vocabDiffs = model.pieces.filter((p, i) => fastJson.model.vocab[p.piece] !== i).length
    expect(vocabDiffs).toBe(0)
  })

  test('unsupported SentencePiece options give a clear error', () => {
    const unigram = { ...model, trainer: { ...model.trainer, modelType: 1 } }
    expect(() => convertSentencePiece(unigram)).toThrow(/unsupported SentencePiece model: model_type 1/)
    const nfkc = { ...model, normalizer: { ...model.normalizer, hasCharsMap: true } }
    expect(() => convertSentencePiece(nfkc)).toThrow(/precompiled charsmap/)
  })
})

describe('merge loop', () => {
  test('MergeTable gives exactly the pieces of the library BPE on every corpus line', () => {
    const lib = new BPE(fastJson.model as never) as unknown as Parameters<typeof MergeTable.fromModel>[0]
    const table = MergeTable.fromModel(lib)
    expect(table).not.toBeNull()
    const words = corpus()
      .flatMap((t) => t.split('\n'))
      .map((w) => '▁' + w.replaceAll(' ', '▁'))
    const wrong = words.filter((w) => table!.bpe(w).join('|') !== lib.bpe(w).join('|'))
    console.log(
      `bpe words compared ${words.length}, pieces ${words.reduce((n, w) => n + lib.bpe(w).length, 0)}, ` +
        `wrong ${wrong.length}`,
    )
    expect(wrong).toEqual([])
    expect(table!.bpe('')).toEqual([])
  })
})

describe('SentencePiece behaviour (tokenizer.model)', () => {
  test('MINICPM4.md §5 spm vectors', () => {
    expect(spm.kind).toBe('tokenizer.model')
    expect(spm.encode(CHAT).join(' ')).toBe('1 73441 1836 5 10643 1458 4695 1835 46715 28344 72 73440 5 73441 43686 5')
    expect(spm.encode('Hello world', { addSpecialTokens: false })).toEqual([15934, 2809])
    expect(spm.encode('你好，世界！', { addSpecialTokens: false })).toEqual([23523, 65, 2925, 67])
    expect(spm.encode('1234567', { addSpecialTokens: false })).toEqual([
      59345, 59349, 59362, 59370, 59367, 59381, 59387,
    ])
  })

  // Recorded with real SentencePiece (the WASM build in @agnai/sentencepiece-js 1.1.1) on this tokenizer.model.
  test.each([
    ['emoji 😀🎉 👩‍👩‍👧', [1454, 24199, 59320, 70571, 71879, 59320, 69282, 72217, 69282, 72217, 65573]],
    ['𓀀 ꙮ 𠜎', [72839, 59320, 70769, 59320, 1329, 1249, 1245, 1231]],
    ['  two  spaces   three    four', [1345, 15438, 1345, 29786, 1345, 2566, 1354, 22277]],
    ['tab\tsep\t\tdouble\n\nnewlines', [10976, 6, 32812, 6, 6, 9738, 5, 5, 2741, 7602]],
    [
      'def f(x):\n    return x ** 2  # square',
      [1962, 1368, 59348, 59356, 3307, 5, 1354, 1720, 1949, 3566, 59320, 59349, 1345, 59377, 6723],
    ],
    [
      '数字2024年，“引号”和……省略号',
      [5539, 59349, 59344, 59349, 59370, 59406, 65, 59445, 59742, 59571, 59449, 59409, 3720, 44439, 59571],
    ],
    [
      '<div>...</div> <!-- c --> ```',
      [59396, 2284, 59388, 75, 1731, 2284, 59388, 59320, 85, 1361, 59320, 86, 59320, 84],
    ],
    [
      'Ünïcödé café naïve Привет',
      [63217, 59322, 62949, 59333, 60748, 59332, 60025, 33903, 60025, 12008, 62949, 1412, 46188, 23380, 60673, 19935],
    ],
  ])('matches SentencePiece on %j', (text, want) => {
    expect(spm.encode(text, { addSpecialTokens: false })).toEqual(want)
  })

  test('every control, user-defined and added token encodes to its own id', () => {
    const atomic = model.pieces.flatMap((p, id) => (isAtomic(p.type) ? [[p.piece, id] as const] : []))
    const added = Object.entries(require(join(FIXTURES, 'added_tokens.json')) as Record<string, number>)
    const all = [...atomic, ...added]
    const wrong = all.filter(([text, id]) => spm.encode(text, { addSpecialTokens: false }).join() !== String(id))
    console.log(`atomic tokens checked ${all.length}, wrong ${wrong.length}`)
    expect(all.length).toBe(3 + 1086 + 8)
    expect(wrong).toEqual([])
  })

  test('decode(encode(x)) == x on the corpus', () => {
    // A literal '▁' is SentencePiece's own space symbol and decodes as ' ' (as in SentencePiece), so it is
    // checked separately and replaced in the corpus.
    expect(spm.decode(spm.encode('a▁b', { addSpecialTokens: false }))).toBe('a b')
    const texts = corpus().map((t) => t.replaceAll('▁', '_'))
    const bad = texts.filter((t) => spm.decode(spm.encode(t, { addSpecialTokens: false })) !== t)
    console.log(`round trips ${texts.length}, chars ${texts.join('').length}, failures ${bad.length}`)
    expect(bad).toEqual([])
  })

  test('byte fallback for a code point outside the vocabulary', () => {
    const ch = '𠜎' // U+2070E, F0 A0 9C 8E in UTF-8
    const ids = spm.encode(ch, { addSpecialTokens: false })
    expect(ids).toEqual([0xf0, 0xa0, 0x9c, 0x8e].map(byteId))
    expect(ids.map((id) => [...spm.tokenBytes(id)])).toEqual([[0xf0], [0xa0], [0x9c], [0x8e]])
    expect(spm.tokenText(ids[0]!)).toBe('\uFFFD') // ids has 4 entries, checked above
    expect(spm.tokenText(byteId(0x41))).toBe('A')
    expect(spm.decode(ids)).toBe(ch)
  })

  test('token text and bytes of ordinary and special tokens', () => {
    expect(spm.tokenText(1458)).toBe(' an')
    expect([...spm.tokenBytes(23523)]).toEqual([...new TextEncoder().encode('你好')])
    expect(spm.tokenText(73440)).toBe('<|im_end|>')
    expect(spm.decode(spm.encode(CHAT), { skipSpecialTokens: true })).toBe(
      'user\nWrite an article about Artificial Intelligence.\nassistant\n',
    )
  })

  test('bad ids and empty input', () => {
    expect(spm.decode([])).toBe('')
    expect(spm.encode('', { addSpecialTokens: false })).toEqual([])
    expect(() => spm.decode([73448])).toThrow(RangeError)
    expect(() => spm.decode([-1])).toThrow(/outside the vocabulary/)
    expect(() => spm.tokenBytes(1.5)).toThrow(RangeError)
  })
})

describe('HF fast behaviour (MiniCPM3 tokenizer.json)', () => {
  test('MINICPM4.md §5 fast vectors', () => {
    expect(fast.kind).toBe('tokenizer.json')
    expect(fast.encode(CHAT).join(' ')).toBe(
      '1 73441 3060 5 10643 1458 4695 1835 46715 28344 72 73440 59320 5 73441 16434 5',
    )
    expect(fast.encode('Hello world', { addSpecialTokens: false })).toEqual([21045, 2809])
    expect(fast.encode('你好，世界！', { addSpecialTokens: false })).toEqual([59320, 23523, 65, 2925, 67])
    expect(fast.encode('1234567', { addSpecialTokens: false })).toEqual([
      59320, 59345, 59349, 59362, 59370, 59367, 59381, 59387,
    ])
  })

  /*
   * What is compared: the corpus is cut into segments at the strings that are atomic in the spm path (control,
   * unknown, user-defined and added tokens, longest match first). Fast runs its normalizer per segment, i.e. BPE over
   * '▁' + segment with spaces as '▁'; the converted tokenizer (no dummy prefix) runs BPE over exactly the same
   * string when given ' ' + segment. So for every plain segment s: spm.encode(' ' + s) must equal fast.encode(s)
   * (same vocab, merges and byte fallback), and the atomic strings that are special in fast map to the same ids.
   * User-defined pieces are not atomic in fast (e.g. '...' -> '.', '.', '.'), which is why they delimit segments.
   */
  test('converted tokenizer.model equals the fast tokenizer.json per segment', () => {
    const atomic = new Set(model.pieces.filter((p) => isAtomic(p.type)).map((p) => p.piece))
    for (const t of Object.keys(require(join(FIXTURES, 'added_tokens.json')))) atomic.add(t)
    const maxLen = Math.max(...[...atomic].map((a) => a.length))
    let segments = 0
    let tokens = 0
    let specials = 0
    const texts = corpus()
    for (const text of texts) {
      let plain = ''
      const flushPlain = () => {
        if (plain === '') return
        const want = fast.encode(plain, { addSpecialTokens: false })
        expect({ plain, ids: spm.encode(' ' + plain, { addSpecialTokens: false }) }).toEqual({ plain, ids: want })
        segments++
        tokens += want.length
        plain = ''
      }
      for (let i = 0; i < text.length;) {
        let hit = ''
        for (let n = Math.min(maxLen, text.length - i); n > 0 && hit === ''; n--) {
          if (atomic.has(text.slice(i, i + n))) hit = text.slice(i, i + n)
        }
        if (hit === '') {
          plain += text[i++]
          continue
        }
        flushPlain()
        const id = spm.encode(hit, { addSpecialTokens: false })
        const first = id[0]
        if (first !== undefined && fast.specialIds.has(first)) {
          expect(fast.encode(hit, { addSpecialTokens: false })).toEqual(id)
          specials++
        }
        i += hit.length
      }
      flushPlain()
    }
    console.log(
      `corpus ${texts.length} texts, ${texts.join('').length} chars; ` +
        `compared ${segments} segments, ${tokens} tokens, ${specials} special tokens`,
    )
    expect(segments).toBeGreaterThan(50)
  })
})

describe('loadTokenizer on a model directory', () => {
  test('reads BOS/EOS from tokenizer_config, generation_config and config.json', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tok-dir-'))
    for (const f of ['tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json']) {
      copyFileSync(join(ASSETS, f), join(dir, f))
    }
    copyFileSync(join(ASSETS, 'config-0.5b/generation_config.json'), join(dir, 'generation_config.json'))
    copyFileSync(join(ASSETS, 'config-0.5b/config.json'), join(dir, 'config.json'))
    const tok = await loadTokenizer(dir)
    expect(tok.bosId).toBe(1)
    expect(tok.eosIds).toEqual([73440, 2])
    expect(tok.vocabSize).toBe(73448)
    expect([...tok.specialIds].sort((a, b) => a - b)).toEqual([
      0, 1, 2, 73440, 73441, 73442, 73443, 73444, 73445, 73446, 73447,
    ])
    expect(tok.encode(CHAT)).toEqual(spm.encode(CHAT))
  })

  test('a directory without a tokenizer, or with a corrupt one, fails clearly', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tok-empty-'))
    await expect(loadTokenizer(dir)).rejects.toThrow(/no tokenizer in .*: expected tokenizer.json or tokenizer.model/)
    const bad = mkdtempSync(join(tmpdir(), 'tok-bad-'))
    writeFileSync(join(bad, 'tokenizer.model'), new Uint8Array([0x0a, 0xff, 0xff, 0xff]))
    await expect(loadTokenizer(bad)).rejects.toThrow(/tokenizer.model: invalid SentencePiece model/)
    const byteLevel = mkdtempSync(join(tmpdir(), 'tok-bytelevel-'))
    const json = {
      added_tokens: [],
      model: { type: 'BPE', vocab: { a: 0 }, merges: [] },
      decoder: { type: 'ByteLevel' },
    }
    writeFileSync(join(byteLevel, 'tokenizer.json'), JSON.stringify(json))
    await expect(loadTokenizer(byteLevel)).rejects.toThrow(/ByteLevel .* not supported/)
    writeFileSync(join(byteLevel, 'tokenizer.json'), JSON.stringify({ ...json, model: { type: 'WordPiece' } }))
    await expect(loadTokenizer(byteLevel)).rejects.toThrow(/model type 'WordPiece' \(expected BPE\)/)
  })
})

describe('converted tokenizer cache', () => {
  test('a second load reads the cached conversion and encodes the same; a corrupt cache entry is replaced', async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), 'minicpm-tok-cache-'))
    const first = await loadTokenizer(ASSETS, { cacheDir })
    const entries = readdirSync(cacheDir).filter((f) => f.endsWith('.json'))
    expect(entries.length).toBe(1)
    const t0 = performance.now()
    const second = await loadTokenizer(ASSETS, { cacheDir })
    console.log(`cache entry ${entries[0]}: second load ${(performance.now() - t0).toFixed(0)} ms`)
    expect(second.encode(CHAT)).toEqual(first.encode(CHAT))
    expect(second.encode(CHAT)).toEqual([1, 73441, 1836, 5, 10643, 1458, 4695, 1835, 46715, 28344, 72, 73440, 5, 73441, 43686, 5])

    writeFileSync(join(cacheDir, entries[0]!), '{ truncated')
    const third = await loadTokenizer(ASSETS, { cacheDir })
    expect(third.encode(CHAT)).toEqual(first.encode(CHAT))
    expect(() => JSON.parse(readFileSync(join(cacheDir, entries[0]!), 'utf8'))).not.toThrow()
  })
})
