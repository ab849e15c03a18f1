/**
 * config.json presets: the two published MiniCPM4 configs and tiny variants of the same
 * architecture. The asset files are imported as files so that `bun build --compile` embeds them.
 */
import { readFileSync } from 'node:fs'

import addedTokens from '../../assets/minicpm4/added_tokens.json' with { type: 'file' }
import config05b from '../../assets/minicpm4/config-0.5b/config.json' with { type: 'file' }
import generation05b from '../../assets/minicpm4/config-0.5b/generation_config.json' with { type: 'file' }
import config8b from '../../assets/minicpm4/config-8b/config.json' with { type: 'file' }
import generation8b from '../../assets/minicpm4/config-8b/generation_config.json' with { type: 'file' }
import specialTokensMap from '../../assets/minicpm4/special_tokens_map.json' with { type: 'file' }
import tokenizerModel from '../../assets/minicpm4/tokenizer.model' with { type: 'file' }
import tokenizerConfig from '../../assets/minicpm4/tokenizer_config.json' with { type: 'file' }

export type PresetName = '0.5b' | '8b' | 'tiny' | 'tiny-8b'
export const PRESET_NAMES: PresetName[] = ['0.5b', '8b', 'tiny', 'tiny-8b']

export type HubConfig = Record<string, unknown>

/** Tokenizer files copied verbatim into every checkpoint: file name -> embedded path. */
export const TOKENIZER_FILES: Record<string, string> = {
  'tokenizer.model': tokenizerModel,
  'tokenizer_config.json': tokenizerConfig as unknown as string,
  'special_tokens_map.json': specialTokensMap as unknown as string,
  'added_tokens.json': addedTokens as unknown as string,
}

function readJson(path: unknown): HubConfig {
  return JSON.parse(readFileSync(path as string, 'utf8')) as HubConfig
}

// Tiny shapes keep the real vocab (tokenizer ids stay valid) and the real ratios: GQA group 4/16,
// and a dim_model_base that gives the real logit divisors (4 for the 0.5B, 16 for the 8B).
const TINY: Record<'tiny' | 'tiny-8b', { base: '0.5b' | '8b'; overrides: HubConfig }> = {
  tiny: {
    base: '0.5b',
    overrides: {
      _name_or_path: 'minicpm-edge/tiny-random',
      hidden_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 8,
      num_key_value_heads: 2,
      intermediate_size: 128,
      dim_model_base: 16,
    },
  },
  'tiny-8b': {
    base: '8b',
    overrides: {
      _name_or_path: 'minicpm-edge/tiny-8b-random',
      hidden_size: 256,
      num_hidden_layers: 2,
      num_attention_heads: 32,
      num_key_value_heads: 2,
      intermediate_size: 256,
      dim_model_base: 16,
    },
  },
}

export function generationConfig(preset: PresetName): HubConfig {
  const base = preset === '8b' || preset === 'tiny-8b' ? generation8b : generation05b
  return readJson(base)
}

/** Evenly spaced picks (both ends kept) so a tiny head_dim still sees the real factor range. */
function resample(factors: number[], n: number): number[] {
  if (factors.length === n) return factors
  if (n === 1) return [factors[0]!]
  return Array.from(
    { length: n },
    (_, i) => factors[Math.round((i * (factors.length - 1)) / (n - 1))]!,
  )
}

export function headDim(cfg: HubConfig): number {
  if (typeof cfg.head_dim === 'number') return cfg.head_dim
  return (cfg.hidden_size as number) / (cfg.num_attention_heads as number)
}

/**
 * The preset's config.json with `overrides` applied on top. LongRoPE factor arrays of the preset
 * are resampled to head_dim / 2 when the shape changed; a `rope_scaling` override is merged key by
 * key and kept as given (`rope_scaling: null` removes it: plain RoPE).
 */
export function presetConfig(preset: PresetName, overrides: HubConfig = {}): HubConfig {
  const tiny = preset === 'tiny' || preset === 'tiny-8b' ? TINY[preset] : undefined
  const base = readJson(
    tiny ? (tiny.base === '8b' ? config8b : config05b) : preset === '8b' ? config8b : config05b,
  )
  const { rope_scaling: ropeOverride, ...rest } = overrides
  const cfg: HubConfig = { ...base, ...tiny?.overrides, ...rest }
  const rope = cfg.rope_scaling as HubConfig | undefined
  if (ropeOverride === null) {
    delete cfg.rope_scaling // plain RoPE
  } else if (rope) {
    const half = headDim(cfg) / 2
    cfg.rope_scaling = {
      ...rope,
      long_factor: resample(rope.long_factor as number[], half),
      short_factor: resample(rope.short_factor as number[], half),
      ...(ropeOverride as HubConfig | undefined),
    }
  } else if (ropeOverride) {
    cfg.rope_scaling = ropeOverride
  }
  return cfg
}
