/**
 * What every CLI command shares: the command shape, flag parsing (node:util parseArgs), the model and
 * sampling flags, and the stderr progress bar.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { QUANTIZE_TYPES } from '../../ffi/index'
import { BACKENDS, KV_DTYPES, type LoadOptions, type Model } from '../runtime/load'
import type { SamplingOptions } from '../types'
import { formatSize, parseSize } from '../util/size'
import { stderrLine, StatusLine } from './term'

export interface Command {
  name: string
  summary: string
  usage: string // full --help text
  run(argv: string[]): Promise<number | void>
}

/** A user mistake: printed as one line without a stack trace. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>

/** Flag spellings other servers use (llama.cpp, vLLM), rewritten to ours before parsing. */
export const FLAG_ALIASES: Record<string, string> = {
  '-c': '--ctx',
  '--ctx-size': '--ctx',
  '--max-model-len': '--ctx',
  '--max-num-seqs': '--parallel',
  '-np': '--parallel',
}

function normalize(argv: string[], options: Options): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') {
      out.push(...argv.slice(i))
      break
    }
    const eq = a.startsWith('--') ? a.indexOf('=') : -1
    const name = eq > 0 ? a.slice(0, eq) : a
    const target = FLAG_ALIASES[name]
    if (target && options[target.slice(2)]) out.push(eq > 0 ? target + a.slice(eq) : target)
    else out.push(a)
  }
  return out
}

/** The closest known flag to a mistyped one (edit distance <= 2), for a "did you mean" hint. */
function closest(flag: string, options: Options): string | null {
  const want = flag.replace(/^-+/, '')
  let best: string | null = null
  let bestD = 3
  for (const name of [...Object.keys(options), ...Object.keys(FLAG_ALIASES).map((a) => a.replace(/^-+/, ''))]) {
    const d = editDistance(want, name)
    if (d < bestD) [best, bestD] = [name, d]
  }
  return best === null ? null : `--${best}`
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1))
      prev = cur
    }
  }
  return row[b.length]!
}

/**
 * node:util parseArgs with our aliases and short error messages ("unknown flag --prot; did you mean
 * --port?") instead of parseArgs' paragraph. `hints` maps a flag to a message for a known confusion.
 */
export function parse<O extends Options>(
  argv: string[],
  options: O,
  allowPositionals = false,
  hints: Record<string, string> = {},
) {
  const all = { ...options, help: { type: 'boolean', short: 'h' } } as O
  for (const a of argv) {
    const hint = hints[a.split('=')[0]!]
    if (hint) throw new UsageError(hint)
  }
  try {
    return parseArgs({ args: normalize(argv, all), options: all, allowPositionals, strict: true })
  } catch (e) {
    const msg = (e as Error).message
    const code = (e as { code?: string }).code
    // parseArgs quotes the flag as '--bogus' or '-n, --max-tokens <value>': keep the long spelling.
    const quoted = /'(-[^']*)'/.exec(msg)?.[1] ?? ''
    const flag = quoted.match(/--[\w-]+/g)?.at(-1) ?? quoted.match(/-\w+/)?.[0]
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag) {
      const near = closest(flag, all)
      throw new UsageError(`unknown flag ${flag}${near ? `; did you mean ${near}?` : ''} (--help lists the flags)`)
    }
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const arg = /'([^']*)'/.exec(msg)?.[1] ?? ''
      throw new UsageError(`unexpected argument '${arg}' (--help lists the flags)`)
    }
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && flag) {
      const needs = /argument missing/.test(msg) ? 'needs a value' : 'takes no value'
      throw new UsageError(`${flag} ${needs}`)
    }
    throw new UsageError(msg.split('. ')[0]!)
  }
}

export const modelOptions = {
  model: { type: 'string', short: 'm' },
  threads: { type: 'string', short: 't' },
  ctx: { type: 'string' },
  parallel: { type: 'string' },
  'kv-bytes': { type: 'string' },
  'kv-dtype': { type: 'string' },
  backend: { type: 'string' },
  'gpu-memory': { type: 'string' },
  'cuda-graphs': { type: 'string' },
  exact: { type: 'boolean' },
  quantize: { type: 'string' },
  'quant-group': { type: 'string' },
  'no-prefix-cache': { type: 'boolean' },
  'tool-format': { type: 'string' },
  draft: { type: 'string' },
  'draft-vocab': { type: 'string' },
  sparse: { type: 'string' },
} as const satisfies Options

export const modelHelp = `Model:
  -m, --model DIR|ID       model directory, or a hub id such as openbmb/MiniCPM4-0.5B (downloaded once, as by
                           'pull'); default: $MINICPM_MODEL, else the generated random-weight tiny model
  -t, --threads N          engine threads (default: all cores)
  -c, --ctx N              most tokens per request (default: the model's max_position_embeddings);
                           also --ctx-size, --max-model-len
      --parallel N         most sequences decoded together (default: the engine's); also --max-num-seqs, -np
      --kv-bytes SIZE      KV cache memory limit: bytes or 512M, 2G, 1.5GiB, 4GB (default 1 GiB; CUDA: what
                           the device arena has left after the weights and a step's activations)
      --kv-dtype T         KV cache element type: ${KV_DTYPES.join(', ')} (default bf16; f32: exact, twice the bytes)
      --backend B          where the engine runs: auto (default: CUDA when built and a GPU is present, else CPU),
                           cpu or cuda (an error when this build or machine has none)
      --gpu-memory SIZE    CUDA: the one device memory arena for weights, KV and activations, allocated at
                           load (default 90% of the free device memory; half on Jetson)
      --cuda-graphs on|off CUDA: replay decode steps as CUDA graphs (default on; off: direct kernel launches)
      --exact              CPU kernels with exact f32 products (no bf16 rounding of activations; slower prefill);
                           the same as MINICPM_KERNELS=exact
      --quantize q8|q4     quantize the weights at load (round to nearest; q8 symmetric, q4 asymmetric)
      --quant-group N      input features per scale, a multiple of 32 (default 128)
      --no-prefix-cache    do not reuse the KV of prompt prefixes across requests (default: reuse whole
                           64-token blocks, e.g. the history a chat resends every turn)
      --tool-format F      how tools and tool calls are rendered and parsed: minicpm (MiniCPM3 / MiniCPM4-MCP
                           Python calls; the default for MiniCPM models) or none (requests with tools get 400)
      --draft DIR          speculative decoding with a draft next to the target, drafting EAGLE-2 token trees
                           (output is unchanged): an EAGLE head (MiniCPM4-8B-Eagle-FRSpec layout) or a plain
                           MiniCPM model with the same vocabulary (e.g. 0.5B for 8B)
      --draft-vocab FILE[:N]  FR-Spec: the draft scores only the first N ids (default: all) of FILE, a freq_N.pt
                           or little-endian int32 list of token ids by frequency; with an EAGLE head its LM head
                           is gathered to those rows
      --sparse MODE        InfLLM v2 sparse attention: on | off | hf | v2 (default: on, variant hf, when
                           config.json has a sparse_config; on = hf; without one the model card's values apply)`

export const samplingOptions = {
  'max-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'presence-penalty': { type: 'string' },
  'frequency-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'ignore-eos': { type: 'boolean' },
} as const satisfies Options

export const samplingHelp = `Sampling (defaults: the model's generation_config.json):
  -n, --max-tokens N       most tokens to generate
      --temperature T      0 = greedy
      --top-p P  --top-k K  --min-p P
      --repetition-penalty R  --presence-penalty P  --frequency-penalty F
      --seed N             same seed + same prompt = same output
      --stop TEXT          stop string (repeatable); cut from the output
      --ignore-eos         keep generating past end-of-sequence tokens`

type Values = Record<string, string | boolean | string[] | undefined>

export function num(values: Values, flag: string, opts: { int?: boolean; min?: number } = {}): number | undefined {
  const raw = values[flag]
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(n) || (opts.int && !Number.isInteger(n))) {
    throw new UsageError(`--${flag} expects ${opts.int ? 'an integer' : 'a number'}, got '${raw}'`)
  }
  if (opts.min !== undefined && n < opts.min) throw new UsageError(`--${flag} must be >= ${opts.min}, got ${n}`)
  return n
}

export function loadOptionsOf(values: Values): LoadOptions & { dir?: string } {
  return {
    dir: values.model as string | undefined,
    nThreads: num(values, 'threads', { int: true, min: 0 }),
    nCtx: num(values, 'ctx', { int: true, min: 1 }),
    nBatchMax: num(values, 'parallel', { int: true, min: 1 }),
    kvBytes: size(values, 'kv-bytes', { min: 1 }),
    kvDtype: kvDtypeOf(values),
    backend: backendOf(values),
    deviceMemory: size(values, 'gpu-memory', { min: 1 }),
    cudaGraphs: cudaGraphsOf(values),
    exact: values.exact === true ? true : undefined,
    ...quantizeOf(values),
    prefixCache: values['no-prefix-cache'] === true ? false : undefined,
    toolFormat: values['tool-format'] as string | undefined,
    draft: values.draft as string | undefined,
    ...draftVocabOf(values),
    sparse: sparseOf(values),
    onProgress: progressBar(),
    onLog: (line) => stderrLine.line(line),
  }
}

/** --draft-vocab FILE or FILE:N. */
export function draftVocabOf(values: Values): { draftVocab?: string; draftVocabSize?: number } {
  const raw = values['draft-vocab']
  if (typeof raw !== 'string') return {}
  const m = /^(.*):(\d+)$/.exec(raw)
  if (!m) return { draftVocab: raw }
  const n = Number(m[2])
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--draft-vocab: N must be a positive integer, got '${m[2]}'`)
  return { draftVocab: m[1], draftVocabSize: n }
}

/** A byte-size flag: a number of bytes or a size with a unit (src/util/size.ts). */
export function size(values: Values, flag: string, opts: { min?: number } = {}): number | undefined {
  const raw = values[flag]
  if (raw === undefined) return undefined
  const n = typeof raw === 'string' ? parseSize(raw) : null
  if (n === null) throw new UsageError(`--${flag} expects a size such as 1073741824, 512M, 2G or 1.5GiB, got '${raw}'`)
  if (opts.min !== undefined && n < opts.min) throw new UsageError(`--${flag} must be >= ${opts.min} bytes, got ${raw}`)
  return n
}

export function backendOf(values: Values): LoadOptions['backend'] {
  const raw = values.backend
  if (raw === undefined) return undefined
  const b = BACKENDS.find((d) => d === raw)
  if (b === undefined) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${raw}'`)
  return b
}

export function cudaGraphsOf(values: Values): boolean | undefined {
  const raw = values['cuda-graphs']
  if (raw === undefined) return undefined
  if (raw !== 'on' && raw !== 'off') throw new UsageError(`--cuda-graphs must be on or off, got '${raw}'`)
  return raw === 'on'
}

export function quantizeOf(values: Values): Pick<LoadOptions, 'quantize' | 'quantGroupSize'> {
  const raw = values.quantize
  const quantize = raw === undefined ? undefined : QUANTIZE_TYPES.find((q) => q === raw)
  if (raw !== undefined && quantize === undefined)
    throw new UsageError(`--quantize must be one of ${QUANTIZE_TYPES.join(', ')}, got '${raw}'`)
  const quantGroupSize = num(values, 'quant-group', { int: true, min: 32 })
  if (quantGroupSize !== undefined && quantGroupSize % 32 !== 0)
    throw new UsageError(`--quant-group must be a multiple of 32, got ${quantGroupSize}`)
  return { quantize, quantGroupSize }

}

export function sparseOf(values: Values): LoadOptions['sparse'] {
  const raw = values.sparse
  if (raw === undefined) return undefined
  const mode = raw === 'on' ? 'hf' : (['off', 'hf', 'v2'] as const).find((m) => m === raw)
  if (mode === undefined) throw new UsageError(`--sparse must be one of on, off, hf, v2, got '${String(raw)}'`)
  return mode
}

export function kvDtypeOf(values: Values): LoadOptions['kvDtype'] {
  const raw = values['kv-dtype']
  if (raw === undefined) return undefined
  const dtype = KV_DTYPES.find((d) => d === raw)
  if (dtype === undefined) throw new UsageError(`--kv-dtype must be one of ${KV_DTYPES.join(', ')}, got '${raw}'`)
  return dtype
}

/** What the engine made of the KV flags, e.g. 'KV cache bf16, 16384 tokens': the budget is the engine's own. */
export function kvSummary(model: Pick<Model, 'info' | 'stats'>): string {
  return `KV cache ${model.info.kvDtype}, ${model.stats().kvTokensTotal} tokens`
}

export function samplingOf(values: Values): SamplingOptions {
  return {
    maxTokens: num(values, 'max-tokens', { int: true, min: 1 }),
    temperature: num(values, 'temperature', { min: 0 }),
    topP: num(values, 'top-p', { min: 0 }),
    topK: num(values, 'top-k', { int: true }),
    minP: num(values, 'min-p', { min: 0 }),
    repetitionPenalty: num(values, 'repetition-penalty', { min: 0 }),
    presencePenalty: num(values, 'presence-penalty'),
    frequencyPenalty: num(values, 'frequency-penalty'),
    seed: num(values, 'seed', { int: true, min: 0 }),
    stop: values.stop as string[] | undefined,
    ignoreEos: values['ignore-eos'] as boolean | undefined,
  }
}

/**
 * A progress callback drawing one bar line on a TTY stderr (silent when stderr is piped). A bar that reaches
 * its total, or is replaced by the next phase, always ends its line.
 */
export function progressBar(
  out: StatusLine = stderrLine,
  isTTY: boolean = process.stderr.isTTY === true,
): (phase: string, done: number, total: number, unit?: 'bytes') => void {
  if (!isTTY) return () => {}
  let current: string | null = null
  let last = ''
  let t0 = 0
  return (phase, done, total, unit) => {
    if (current !== phase) t0 = performance.now()
    if (current !== null && current !== phase) out.end()
    current = phase
    // Steps without a measurable amount (total 1) get one line, not a bar that jumps from 0 to 100%.
    const line =
      total <= 1
        ? `${phase}...${done >= total ? ' done' : ''}`
        : `${phase.padEnd(24)} [${bar(done / total)}] ${Math.floor(Math.min(1, done / total) * 100)}%` +
          (unit === 'bytes' ? ` ${formatSize(done)} / ${formatSize(total)}${rate(done, t0)}` : '')
    if (done >= total) {
      out.end(line)
      current = null
      last = ''
    } else if (line !== last) {
      out.show(line)
      last = line
    }
  }
}

function rate(bytes: number, t0: number): string {
  const s = (performance.now() - t0) / 1000
  return s > 0.5 ? ` ${formatSize(bytes / s)}/s` : ''
}

function bar(frac: number, width = 30): string {
  const fill = Math.round(Math.max(0, Math.min(1, frac)) * width)
  return '#'.repeat(fill) + '-'.repeat(width - fill)
}
