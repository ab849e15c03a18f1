/**
 * What every CLI command shares: the command shape, flag parsing (node:util parseArgs), the model and
 * sampling flags, and the stderr progress bar.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { KV_DTYPES, type LoadOptions, type Model } from '../runtime/load'
import type { SamplingOptions } from '../types'

export interface Command {
  name: string
  summary: string
  usage: string // full --help text
  run(argv: string[]): Promise<number | void>
}

/** A user mistake: printed as one line without a stack trace. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>

export function parse<O extends Options>(argv: string[], options: O, allowPositionals = false) {
  try {
    return parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals,
      strict: true,
    })
  } catch (e) {
    throw new UsageError((e as Error).message)
  }
}

export const modelOptions = {
  model: { type: 'string', short: 'm' },
  threads: { type: 'string', short: 't' },
  ctx: { type: 'string' },
  'kv-bytes': { type: 'string' },
  'kv-dtype': { type: 'string' },
  sparse: { type: 'string' },
} as const satisfies Options

export const modelHelp = `Model:
  -m, --model DIR          model directory (default: $MINICPM_MODEL, else the generated random-weight tiny model)
  -t, --threads N          engine threads (default: all cores)
      --ctx N              most tokens per request (default: the model's max_position_embeddings)
      --kv-bytes N         KV cache memory limit in bytes (default 1 GiB)
      --kv-dtype T         KV cache element type: ${KV_DTYPES.join(', ')} (default bf16; f32: exact, twice the bytes)
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
    kvBytes: num(values, 'kv-bytes', { int: true, min: 1 }),
    kvDtype: kvDtypeOf(values),
    sparse: sparseOf(values),
    onProgress: progressBar(),
  }
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

/** A progress callback drawing one bar line on a TTY stderr; silent when stderr is piped. */
export function progressBar(): (phase: string, done: number, total: number) => void {
  if (!process.stderr.isTTY) return () => {}
  let last = ''
  return (phase, done, total) => {
    // Steps without a measurable amount (total 1) get one line, not a bar that jumps from 0 to 100%.
    if (total <= 1) {
      process.stderr.write(done < total ? `${phase}...` : ' done\n')
      return
    }
    const frac = total > 0 ? Math.min(1, done / total) : 1
    const width = 30
    const fill = Math.round(frac * width)
    const line = `${phase.padEnd(24)} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${Math.round(frac * 100)}%`
    if (line === last) return
    last = line
    process.stderr.write(`\r${line}${done >= total ? '\n' : ''}`)
  }
}
