/**
 * The random-checkpoint generator (src/checkpoint/): hub layout, determinism, and weight
 * statistics. Read back with the reference's own safetensors reader; no engine involved.
 */
import { afterAll, describe, expect, test } from 'bun:test'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { presetConfig, TOKENIZER_FILES } from '../src/checkpoint/presets'
import { cachedCheckpoint, freshCheckpoint, PARITY_05B } from './helpers/checkpoints'
import { diff } from './helpers/compare'
import { readCheckpointTensors, readSafetensors } from './reference/safetensors-reader'

const written: string[] = []
afterAll(() => {
  for (const d of written) rmSync(d, { recursive: true, force: true })
})

function stats(data: Float64Array): { mean: number; std: number } {
  let s = 0
  let s2 = 0
  for (const v of data) {
    s += v
    s2 += v * v
  }
  const mean = s / data.length
  return { mean, std: Math.sqrt(s2 / data.length - mean * mean) }
}

describe('writeCheckpoint', () => {
  test('hub layout: config marker, real tokenizer files, tied head', () => {
    const dir = cachedCheckpoint('tiny', { preset: 'tiny' })
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    expect(cfg.minicpm_edge.random_weights).toBe(true)
    expect(cfg.vocab_size).toBe(73448)
    expect(cfg.hidden_size).toBe(64)
    // The 0.5B config omits tie_word_embeddings (tied by default); the tiny preset keeps that.
    expect('tie_word_embeddings' in cfg).toBe(false)
    expect(cfg.rope_scaling.long_factor.length).toBe(cfg.hidden_size / cfg.num_attention_heads / 2)
    for (const [name, src] of Object.entries(TOKENIZER_FILES)) {
      expect(readFileSync(join(dir, name)).equals(readFileSync(src))).toBe(true)
    }
    const gen = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8'))
    expect(gen.eos_token_id).toEqual([2, 73440])
    const tensors = readCheckpointTensors(dir)
    expect(tensors.has('lm_head.weight')).toBe(false)
    expect(tensors.size).toBe(2 + 2 * 9)
  })

  test('presets 0.5b and 8b are the published configs', () => {
    const small = presetConfig('0.5b')
    const big = presetConfig('8b')
    expect([small.hidden_size, small.num_hidden_layers, small.rms_norm_eps]).toEqual([
      1024, 24, 1e-5,
    ])
    expect([
      big.hidden_size,
      big.num_hidden_layers,
      big.rms_norm_eps,
      big.tie_word_embeddings,
    ]).toEqual([4096, 32, 1e-6, false])
    expect((big.rope_scaling as { long_factor: number[] }).long_factor.length).toBe(64)
  })

  test('shards: index covers every tensor; values equal the single file', () => {
    const single = cachedCheckpoint('p05', PARITY_05B)
    const dir = cachedCheckpoint('p05-sharded', { ...PARITY_05B, shards: 3 })
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'))
    const files = [...new Set(Object.values(index.weight_map as Record<string, string>))].sort()
    expect(files).toEqual([1, 2, 3].map((i) => `model-0000${i}-of-00003.safetensors`))
    let bytes = 0
    for (const f of files) {
      for (const [name, t] of readSafetensors(join(dir, f))) {
        expect(index.weight_map[name]).toBe(f)
        bytes += t.data.length * (t.dtype === 'F32' ? 4 : 2)
      }
    }
    expect(index.metadata.total_size).toBe(bytes)
    const one = readCheckpointTensors(single)
    const three = readCheckpointTensors(dir)
    expect([...three.keys()].sort()).toEqual([...one.keys()].sort())
    let maxDiff = 0
    for (const [name, t] of one)
      maxDiff = Math.max(maxDiff, diff([three.get(name)!.data], [t.data]).maxAbs)
    console.log(`sharded vs single: ${one.size} tensors, ${bytes} bytes, max abs diff ${maxDiff}`)
    expect(maxDiff).toBe(0)
  })

  test('deterministic per seed', () => {
    const opts = { preset: 'tiny', overrides: { vocab_size: 128 } } as const
    const a = freshCheckpoint({ ...opts, seed: 9 })
    const b = freshCheckpoint({ ...opts, seed: 9 })
    const c = freshCheckpoint({ ...opts, seed: 10 })
    written.push(a, b, c)
    const file = (d: string) => readFileSync(join(d, 'model.safetensors'))
    expect(file(a).equals(file(b))).toBe(true)
    expect(file(a).equals(file(c))).toBe(false)
  })

  test('weight statistics: embeddings 0.05, projections 1/sqrt(fan_in), norms 1 +- 0.1', () => {
    const tensors = readCheckpointTensors(cachedCheckpoint('tiny', { preset: 'tiny' }))
    const want: Array<[string, number, number]> = [
      ['model.embed_tokens.weight', 0, 0.05],
      ['model.layers.0.self_attn.q_proj.weight', 0, 1 / Math.sqrt(64)],
      ['model.layers.1.mlp.down_proj.weight', 0, 1 / Math.sqrt(128)],
      ['model.layers.0.input_layernorm.weight', 1, 0.1],
    ]
    for (const [name, mean, std] of want) {
      const got = stats(tensors.get(name)!.data)
      const size = tensors.get(name)!.data.length
      // Values are drawn from a 65536-entry normal table: that bounds the effective sample size.
      const n = Math.min(size, 65536)
      console.log(
        `${name}: n ${size} mean ${got.mean.toFixed(4)} (want ${mean}) std ${got.std.toFixed(4)} (want ${std.toFixed(4)})`,
      )
      // 5 sigma of the sampling error of mean and std, plus bf16 rounding (2^-9 relative).
      expect(Math.abs(got.mean - mean)).toBeLessThan(
        (5 * std) / Math.sqrt(n) + 0.004 * Math.abs(mean),
      )
      expect(Math.abs(got.std / std - 1)).toBeLessThan(5 / Math.sqrt(2 * n) + 0.004)
    }
  })

  test('small vocab drops special ids it cannot hold', () => {
    const dir = cachedCheckpoint('p05', PARITY_05B)
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    const gen = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8'))
    expect(cfg.eos_token_id).toEqual([2])
    expect(gen.eos_token_id).toEqual([2])
  })
})
