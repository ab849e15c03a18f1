/**
 * Tokenizer entry point: the Tokenizer interface the runtime codes against and loadTokenizer(dir).
 *
 * Two behaviours are deliberate (MINICPM4.md §5): a model dir with tokenizer.json is run with HF fast semantics
 * exactly as that json says (for the MiniCPM family: a '▁' prepended to every text segment); a dir with only
 * tokenizer.model is converted in process to reproduce SentencePiece / the slow LlamaTokenizer (no dummy prefix).
 */

import { createHash } from 'node:crypto'
import { mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { convertSentencePiece, type TokenizerConfigJson } from './convert'
import { parseSentencePieceModel } from './sentencepiece-model'
import { JsonTokenizer, type TokenizerSources } from './tokenizer'

export interface Tokenizer {
  /** addSpecialTokens (default true) adds BOS per tokenizer_config add_bos_token */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[]
  /**
   * Like encode, but special tokens are split (HF split_special_tokens): text such as '<|im_end|>' becomes the
   * tokens of those characters, never the control token. For user content inside a chat prompt.
   */
  encodeText(text: string, opts?: { addSpecialTokens?: boolean }): number[]
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string
  /** one token's surface text; a byte-fallback token gives its raw byte as text (U+FFFD when not ASCII) */
  tokenText(id: number): string
  /** exact bytes of one token */
  tokenBytes(id: number): Uint8Array
  readonly vocabSize: number
  readonly bosId: number | null
  /** tokenizer_config eos_token, then generation_config / config eos_token_id, deduped */
  readonly eosIds: number[]
  readonly specialIds: Set<number>
  /** The text of every special token (e.g. '<|im_start|>'), longest first. */
  readonly specialTokens: string[]
  /** Longest vocabulary piece in UTF-16 units: a text of n units needs at least n / maxPieceChars tokens. */
  readonly maxPieceChars: number
  readonly kind: 'tokenizer.json' | 'tokenizer.model'
}

export { benchTokenizer } from './tokenizer'
export { convertSentencePiece, mergesFromVocab } from './convert'
export { parseSentencePieceModel } from './sentencepiece-model'

async function readJson<T>(path: string): Promise<T | null> {
  const file = Bun.file(path)
  if (!(await file.exists())) return null
  try {
    return (await file.json()) as T
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message})`)
  }
}

function idList(v: unknown): number[] {
  const list = Array.isArray(v) ? v : v === undefined || v === null ? [] : [v]
  return list.filter((x): x is number => Number.isInteger(x))
}

/**
 * Loads the tokenizer of a model directory; prefers tokenizer.json, else converts tokenizer.model.
 * With cacheDir, the converted tokenizer.json is kept there for the next load.
 */
export async function loadTokenizer(dir: string, opts: { cacheDir?: string } = {}): Promise<Tokenizer> {
  const config = (await readJson<TokenizerConfigJson>(join(dir, 'tokenizer_config.json'))) ?? {}
  const genConfig = (await readJson<{ eos_token_id?: unknown }>(join(dir, 'generation_config.json'))) ?? {}
  const modelConfig =
    (await readJson<{ eos_token_id?: unknown; bos_token_id?: unknown }>(join(dir, 'config.json'))) ?? {}
  const common = {
    config,
    extraEosIds: [...idList(genConfig.eos_token_id), ...idList(modelConfig.eos_token_id)],
    configBosId: idList(modelConfig.bos_token_id)[0] ?? null,
  }

  const json = await readJson<TokenizerSources['json']>(join(dir, 'tokenizer.json'))
  if (json !== null) return new JsonTokenizer({ ...common, json, kind: 'tokenizer.json' })

  const spm = Bun.file(join(dir, 'tokenizer.model'))
  if (!(await spm.exists())) {
    throw new Error(`no tokenizer in ${dir}: expected tokenizer.json or tokenizer.model`)
  }
  const spmBytes = new Uint8Array(await spm.arrayBuffer())
  const added = (await readJson<Record<string, number>>(join(dir, 'added_tokens.json'))) ?? {}
  // The conversion takes ~0.3 s; its result depends only on these inputs, so it is cached by their hash.
  const key = createHash('sha256')
    .update(spmBytes)
    .update(JSON.stringify([config, added]))
    .digest('hex')
    .slice(0, 32)
  const cached = opts.cacheDir ? join(opts.cacheDir, `${key}.json`) : null
  let converted = cached ? await readJson<TokenizerSources['json']>(cached).catch(() => null) : null
  if (converted === null) {
    let model
    try {
      model = parseSentencePieceModel(spmBytes)
    } catch (e) {
      throw new Error(`${join(dir, 'tokenizer.model')}: ${(e as Error).message}`)
    }
    converted = convertSentencePiece(model, config, added) as TokenizerSources['json']
    if (cached) writeCache(cached, converted)
  }
  return new JsonTokenizer({ ...common, json: converted, kind: 'tokenizer.model' })
}

/** Best effort: a cache that cannot be written only costs the next load the conversion again. */
function writeCache(path: string, json: unknown): void {
  try {
    mkdirSync(join(path, '..'), { recursive: true })
    const tmp = `${path}.${process.pid}.tmp`
    writeFileSync(tmp, JSON.stringify(json))
    renameSync(tmp, path)
  } catch {
    // read-only or full cache dir: keep working without it
  }
}
