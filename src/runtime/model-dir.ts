/**
 * What a hub-layout model directory says about itself beyond the weights: its id, whether it holds
 * generated random weights, and the sampling defaults of generation_config.json.
 */
import { existsSync, readFileSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { repoOfSnapshot } from '../hub/cache'
import type { SamplingOptions } from '../types'

export interface ModelDirFacts {
  dir: string
  id: string
  randomWeights: boolean
  config: Record<string, unknown>
  generationDefaults: SamplingOptions
  /** Fields of generation_config.json that were ignored, each naming the field and why. */
  warnings: string[]
}

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`)
  }
}

export function readModelDir(dir: string): ModelDirFacts {
  const abs = resolve(dir)
  const configPath = join(abs, 'config.json')
  if (!existsSync(configPath)) throw new Error(`${abs} is not a model directory: config.json is missing`)
  const config = readJson(configPath)
  const marker = config.minicpm_edge as { random_weights?: unknown } | undefined
  const genPath = join(abs, 'generation_config.json')
  const warnings: string[] = []
  const generationDefaults = existsSync(genPath)
    ? samplingDefaults(readJson(genPath), (w) => warnings.push(`${genPath}: ${w}`))
    : {}
  return {
    dir: abs,
    id: repoOfSnapshot(abs) ?? basename(abs),
    randomWeights: marker?.random_weights === true,
    config,
    generationDefaults,
    warnings,
  }
}

const INT32_MAX = 2 ** 31 - 1

/** Valid range of each generation_config field we read: [lo, hi, integer, lo exclusive]. */
const GEN_FIELDS: Record<string, [number, number, boolean, boolean]> = {
  temperature: [0, 100, false, false],
  top_p: [0, 1, false, true],
  top_k: [0, INT32_MAX, true, false],
  min_p: [0, 1, false, false],
  repetition_penalty: [0, 100, false, true],
  max_new_tokens: [1, INT32_MAX, true, false],
}

/** HF generation_config.json -> the request fields it provides defaults for. */
export function samplingDefaults(
  gen: Record<string, unknown>,
  warn: (line: string) => void = () => {},
): SamplingOptions {
  // A value of the wrong type or out of range is ignored with a warning naming it (never sent to the engine).
  const num = (k: string) => {
    const v = gen[k]
    if (v === undefined || v === null) return undefined
    const [lo, hi, int, loOpen] = GEN_FIELDS[k]!
    const ok =
      typeof v === 'number' &&
      Number.isFinite(v) &&
      (!int || Number.isInteger(v)) &&
      (loOpen ? v > lo : v >= lo) &&
      v <= hi
    if (!ok) {
      const range = `${loOpen ? '(' : '['}${lo}, ${hi}]`
      warn(`'${k}' ignored: ${JSON.stringify(v)} is not ${int ? 'an integer' : 'a number'} in ${range}`)
      return undefined
    }
    return v as number
  }
  const out: SamplingOptions = {}
  // HF: do_sample false means greedy whatever temperature says.
  const temperature = gen.do_sample === false ? 0 : num('temperature')
  if (temperature !== undefined) out.temperature = temperature
  const set = <K extends keyof SamplingOptions>(k: K, field: string) => {
    const v = num(field)
    if (v !== undefined) out[k] = v as SamplingOptions[K]
  }
  set('topP', 'top_p')
  set('topK', 'top_k')
  set('minP', 'min_p')
  set('repetitionPenalty', 'repetition_penalty')
  set('maxTokens', 'max_new_tokens')
  return out
}
