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
  return {
    dir: abs,
    id: repoOfSnapshot(abs) ?? basename(abs),
    randomWeights: marker?.random_weights === true,
    config,
    generationDefaults: existsSync(genPath) ? samplingDefaults(readJson(genPath)) : {},
  }
}

/** HF generation_config.json -> the request fields it provides defaults for. */
export function samplingDefaults(gen: Record<string, unknown>): SamplingOptions {
  const num = (k: string) => (typeof gen[k] === 'number' ? (gen[k] as number) : undefined)
  const out: SamplingOptions = {}
  // HF: do_sample false means greedy whatever temperature says.
  const temperature = gen.do_sample === false ? 0 : num('temperature')
  if (temperature !== undefined) out.temperature = temperature
  if (num('top_p') !== undefined) out.topP = num('top_p')
  if (num('top_k') !== undefined) out.topK = num('top_k')
  if (num('min_p') !== undefined) out.minP = num('min_p')
  if (num('repetition_penalty') !== undefined) out.repetitionPenalty = num('repetition_penalty')
  if (num('max_new_tokens') !== undefined) out.maxTokens = num('max_new_tokens')
  return out
}
