/**
 * The Tokenizer implementation: a tokenizer.json object run by @huggingface/tokenizers, plus the per-token byte
 * table that logprobs and the stream decoder need, and the model's BOS/EOS/special ids.
 */

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers'
import { MergeTable } from './bpe'
import { tokenContent, type AddedTokenJson, type TokenizerConfigJson } from './convert'
import type { Tokenizer } from './index'

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/
const utf8 = new TextEncoder()
const utf8Decoder = new TextDecoder()

interface TokenizerJson {
  added_tokens: AddedTokenJson[]
  model: { type: string; vocab: Record<string, number> }
  decoder?: { type: string; decoders?: Array<{ type: string }> } | null
}

export interface TokenizerSources {
  json: TokenizerJson & Record<string, unknown>
  config: TokenizerConfigJson
  /** eos ids from generation_config.json / config.json, merged after tokenizer_config's eos_token */
  extraEosIds: number[]
  /** config.json bos_token_id, used when tokenizer_config names no bos_token */
  configBosId: number | null
  kind: Tokenizer['kind']
}

export class JsonTokenizer implements Tokenizer {
  readonly vocabSize: number
  readonly bosId: number | null
  readonly eosIds: number[]
  readonly specialIds: Set<number>
  readonly specialTokens: string[]
  readonly maxPieceChars: number
  readonly kind: Tokenizer['kind']
  private readonly hf: HfTokenizer
  private plain: HfTokenizer | null = null
  private readonly pieces: string[] = []
  private readonly added = new Set<number>()
  private readonly bytesCache: Array<Uint8Array | undefined> = []

  constructor(src: TokenizerSources) {
    if (src.json.model?.type !== 'BPE') {
      throw new Error(`unsupported tokenizer.json model type '${src.json.model?.type}' (expected BPE)`)
    }
    // tokenBytes() reads pieces SentencePiece-style ('▁' = space, <0xNN> = one byte); GPT-2 byte-level differs.
    const decoders = src.json.decoder?.decoders ?? (src.json.decoder ? [src.json.decoder] : [])
    if (decoders.some((d) => d.type === 'ByteLevel')) {
      throw new Error('unsupported tokenizer.json: ByteLevel (GPT-2 style) tokenizers are not supported')
    }
    // clean_up_tokenization_spaces defaults to false (tokenizers.js would default it to true).
    const cfg = { ...src.config, clean_up_tokenization_spaces: src.config.clean_up_tokenization_spaces ?? false }
    this.hf = new HfTokenizer(src.json, cfg)
    const model = this.hf.model as unknown as Parameters<typeof MergeTable.fromModel>[0]
    MergeTable.fromModel(model)?.install(model)
    this.kind = src.kind
    for (const [piece, id] of Object.entries(src.json.model.vocab)) this.pieces[id] = piece
    for (const t of src.json.added_tokens) {
      this.pieces[t.id] = t.content
      this.added.add(t.id)
    }
    this.vocabSize = this.pieces.length
    this.specialIds = new Set(src.json.added_tokens.filter((t) => t.special).map((t) => t.id))
    this.specialTokens = src.json.added_tokens
      .filter((t) => t.special)
      .map((t) => t.content)
      .sort((a, b) => b.length - a.length)
    let longest = 1
    for (const p of this.pieces) if (p !== undefined && p.length > longest) longest = p.length
    this.maxPieceChars = longest
    const idOf = (c: string | null) => (c === null ? undefined : this.hf.token_to_id(c))
    this.bosId = idOf(tokenContent(src.config.bos_token)) ?? src.configBosId
    const eos = idOf(tokenContent(src.config.eos_token))
    this.eosIds = [...new Set([...(eos === undefined ? [] : [eos]), ...src.extraEosIds])]
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new TypeError('encode: text must be a string')
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids
  }

  encodeText(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new TypeError('encodeText: text must be a string')
    if (!this.specialTokens.some((t) => text.includes(t))) return this.encode(text, opts)
    this.plain ??= withoutSpecialSplitting(this.hf)
    return this.plain.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    for (const id of ids) this.piece(id) // a RangeError naming the bad id
    if (ids.length === 0) return '' // tokenizers.js throws on an empty list
    return this.hf.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? false })
  }

  tokenText(id: number): string {
    return utf8Decoder.decode(this.tokenBytes(id))
  }

  /** Byte-fallback pieces give their byte; other pieces their text with '▁' as a space (the decoder's Replace). */
  tokenBytes(id: number): Uint8Array {
    const piece = this.piece(id)
    let b = this.bytesCache[id]
    if (b === undefined) {
      const hex = this.added.has(id) ? undefined : BYTE_PIECE.exec(piece)?.[1]
      b = hex ? Uint8Array.of(parseInt(hex, 16)) : utf8.encode(this.added.has(id) ? piece : piece.replaceAll('▁', ' '))
      this.bytesCache[id] = b
    }
    return b
  }

  /** The vocab piece of `id`; throws for an id outside the vocabulary (or a hole in it). */
  private piece(id: number): string {
    const piece = Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.pieces[id] : undefined
    if (piece === undefined) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`)
    }
    return piece
  }
}

interface HfAddedToken {
  content: string
  special: boolean
  normalized: boolean
}
interface HfInternals {
  added_tokens: HfAddedToken[]
  added_tokens_map: Map<string, HfAddedToken>
  normalizer: ((s: string) => string) | null
  splitter_unnormalized: { constructor: new (tokens: string[]) => unknown }
  splitter_normalized: unknown
}

/**
 * The same tokenizer with special tokens left out of the added-token splitting (what HF's
 * split_special_tokens=True does): their text goes through the model like any other text. It shares
 * everything else (vocab, merges, caches) with `hf`; tokenizers.js has no such option, so this swaps its
 * two splitters and its added-token map on a prototype-linked copy.
 */
function withoutSpecialSplitting(hf: HfTokenizer): HfTokenizer {
  const h = hf as unknown as HfInternals
  const kept = h.added_tokens.filter((t) => !t.special)
  const Splitter = h.splitter_unnormalized.constructor
  const norm = h.normalizer
  const copy = Object.create(hf) as HfInternals
  copy.added_tokens_map = new Map([...h.added_tokens_map].filter(([, t]) => !t.special))
  copy.splitter_unnormalized = new Splitter(kept.filter((t) => !(t.normalized && norm)).map((t) => t.content)) as never
  copy.splitter_normalized = new Splitter(kept.filter((t) => t.normalized && norm).map((t) => norm!(t.content)))
  return copy as unknown as HfTokenizer
}

/**
 * Tokenizer throughput on `text`, for the CLI's bench command: encode and decode tokens per second, each
 * repeated until at least `minMs` has passed so that short texts still give a stable figure.
 */
export function benchTokenizer(
  tokenizer: Tokenizer,
  text: string,
  opts: { minMs?: number } = {},
): { tokens: number; encodeTokensPerS: number; decodeTokensPerS: number } {
  const minMs = opts.minMs ?? 200
  const ids = tokenizer.encode(text, { addSpecialTokens: false })
  if (ids.length === 0) throw new Error('benchTokenizer: text encodes to no tokens')
  const rate = (fn: () => void) => {
    let n = 0
    const t0 = performance.now()
    do {
      fn()
      n++
    } while (performance.now() - t0 < minMs)
    return (n * ids.length * 1000) / (performance.now() - t0)
  }
  return {
    tokens: ids.length,
    encodeTokensPerS: rate(() => tokenizer.encode(text, { addSpecialTokens: false })),
    decodeTokensPerS: rate(() => tokenizer.decode(ids)),
  }
}
