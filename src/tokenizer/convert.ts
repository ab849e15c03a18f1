/**
 * SentencePiece `tokenizer.model` -> HF `tokenizer.json` object, in the manner of transformers' LlamaConverter.
 *
 * Behaviour choice (MINICPM4.md §5): this path reproduces SentencePiece / the slow LlamaTokenizer (behaviour 1),
 * so the normalizer follows the model's own normalizer_spec: MiniCPM4 has add_dummy_prefix = false, hence NO
 * Prepend('▁') (the MiniCPM family tokenizer.json files carry one, which gives behaviour 2). Special tokens are
 * split out before normalization and user-defined pieces are atomic, as in SentencePiece. A tokenizer.json loaded
 * from disk is used as is (HF fast semantics, behaviour 2 for the MiniCPM family jsons).
 */

import { PieceType, SpmModelType, type SpmModel } from './sentencepiece-model'

export interface AddedTokenJson {
  id: number
  content: string
  single_word: boolean
  lstrip: boolean
  rstrip: boolean
  normalized: boolean
  special: boolean
}

/** The subset of tokenizer_config.json (plus added_tokens.json) that shapes the converted tokenizer. */
export interface TokenizerConfigJson {
  add_bos_token?: boolean
  add_eos_token?: boolean
  bos_token?: string | { content: string } | null
  eos_token?: string | { content: string } | null
  additional_special_tokens?: Array<string | { content: string }>
  added_tokens_decoder?: Record<string, Partial<AddedTokenJson> & { content: string }>
  [key: string]: unknown
}

export function tokenContent(t: string | { content: string } | null | undefined): string | null {
  if (t == null) return null
  return typeof t === 'string' ? t : t.content
}

function checkSupported(model: SpmModel): void {
  const { trainer, normalizer } = model
  const problems: string[] = []
  if (trainer.modelType !== SpmModelType.Bpe) problems.push(`model_type ${trainer.modelType} (only BPE = 2)`)
  if (normalizer.hasCharsMap) problems.push(`normalizer '${normalizer.name}' with a precompiled charsmap`)
  if (normalizer.removeExtraWhitespaces) problems.push('remove_extra_whitespaces = true')
  if (!normalizer.escapeWhitespaces) problems.push('escape_whitespaces = false')
  if (trainer.treatWhitespaceAsSuffix) problems.push('treat_whitespace_as_suffix = true')
  if (problems.length > 0) {
    throw new Error(`unsupported SentencePiece model: ${problems.join(', ')}; provide a tokenizer.json instead`)
  }
}

/**
 * Merges implied by a BPE vocabulary: every split of a piece into two pieces that are both in the vocab, ranked
 * by the merged piece's score (descending); splits of one piece keep (left id, right id) order. This is the
 * ordering of transformers' SentencePieceExtractor that produced the MiniCPM family tokenizer.json (the test
 * checks the result equals the MiniCPM3 merges list exactly; newer transformers add a length tie-break).
 */
export function mergesFromVocab(pieces: SpmModel['pieces']): Array<[string, string]> {
  const ids = new Map<string, number>()
  pieces.forEach((p, i) => ids.set(p.piece, i))
  const all: Array<{ l: string; r: string; score: number }> = []
  for (const { piece, score } of pieces) {
    const local: typeof all = []
    let left = ''
    for (const cp of Array.from(piece).slice(0, -1)) {
      left += cp
      const right = piece.slice(left.length)
      if (ids.has(left) && ids.has(right)) local.push({ l: left, r: right, score })
    }
    local.sort((a, b) => ids.get(a.l)! - ids.get(b.l)! || ids.get(a.r)! - ids.get(b.r)!)
    all.push(...local)
  }
  // Array.prototype.sort is stable, like Python's sorted(reverse=True) on equal keys.
  all.sort((a, b) => b.score - a.score)
  return all.map((m) => [m.l, m.r])
}

function addedTokens(model: SpmModel, config: TokenizerConfigJson, addedJson: Record<string, number>) {
  const byId = new Map<number, AddedTokenJson>()
  const base = { single_word: false, lstrip: false, rstrip: false, normalized: false }
  // Control pieces are special; user-defined pieces are atomic but not special (LlamaConverter).
  model.pieces.forEach((p, id) => {
    if (p.type === PieceType.Control || p.type === PieceType.UserDefined) {
      byId.set(id, { id, content: p.piece, ...base, special: p.type === PieceType.Control })
    }
  })
  const specialNames = new Set(
    [config.bos_token, config.eos_token, ...(config.additional_special_tokens ?? [])].map(tokenContent),
  )
  for (const [content, id] of Object.entries(addedJson)) {
    if (!byId.has(id)) byId.set(id, { id, content, ...base, special: specialNames.has(content) })
  }
  for (const [key, t] of Object.entries(config.added_tokens_decoder ?? {})) {
    const id = Number(key)
    byId.set(id, { ...base, special: false, ...t, id })
  }
  for (const t of byId.values()) {
    const vocabPiece = model.pieces[t.id]?.piece
    if (vocabPiece !== undefined && vocabPiece !== t.content) {
      throw new Error(`added token ${t.id} '${t.content}' conflicts with vocab piece '${vocabPiece}'`)
    }
  }
  return [...byId.values()].sort((a, b) => a.id - b.id)
}

/** TemplateProcessing like LlamaTokenizerFast.update_post_processor: `<s> $A` (+ `</s>` when add_eos_token). */
function postProcessor(config: TokenizerConfigJson, idOf: (content: string) => number | undefined) {
  const bos = (config.add_bos_token ?? true) ? (tokenContent(config.bos_token) ?? '<s>') : null
  const eos = config.add_eos_token ? (tokenContent(config.eos_token) ?? '</s>') : null
  const template = (seq: 'A' | 'B', type_id: number) => [
    ...(bos !== null ? [{ SpecialToken: { id: bos, type_id } }] : []),
    { Sequence: { id: seq, type_id } },
    ...(eos !== null ? [{ SpecialToken: { id: eos, type_id } }] : []),
  ]
  const special_tokens: Record<string, unknown> = {}
  for (const c of [bos, eos]) {
    if (c === null) continue
    const id = idOf(c)
    if (id === undefined) throw new Error(`special token '${c}' is not in the vocabulary`)
    special_tokens[c] = { id: c, ids: [id], tokens: [c] }
  }
  return {
    type: 'TemplateProcessing',
    single: template('A', 0),
    pair: [...template('A', 0), ...template('B', 1)],
    special_tokens,
  }
}

/**
 * Builds the tokenizer.json object. `added` is added_tokens.json (content -> id), which may be empty.
 * Throws a clear Error for SentencePiece features this converter does not reproduce.
 */
export function convertSentencePiece(
  model: SpmModel,
  config: TokenizerConfigJson = {},
  added: Record<string, number> = {},
): Record<string, unknown> {
  checkSupported(model)
  const vocab: Record<string, number> = Object.create(null) // a piece may be named like an Object key
  model.pieces.forEach((p, i) => (vocab[p.piece] = i))
  const added_tokens = addedTokens(model, config, added)
  const idOf = (c: string) => vocab[c] ?? added_tokens.find((t) => t.content === c)?.id

  const prefix = model.normalizer.addDummyPrefix
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        ...(prefix ? [{ type: 'Prepend', prepend: '▁' }] : []),
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: postProcessor(config, idOf),
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(prefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: model.trainer.unkPiece,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: model.trainer.byteFallback,
      ignore_merges: false,
      vocab,
      merges: mergesFromVocab(model.pieces),
    },
  }
}
