/**
 * Test checkpoints: generated once per generator version under os.tmpdir() and reused across test
 * files and runs. Each is written to a private temp dir and renamed into place, so a half-written
 * one is never seen.
 */
import { createHash } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { writeCheckpoint, type CheckpointOptions } from '../../src/checkpoint/write-checkpoint'

export const CHECKPOINT_ROOT = join(tmpdir(), 'minicpm-edge-test-checkpoints')

const GENERATOR_DIR = join(import.meta.dir, '../../src/checkpoint')

// The key covers the generator's source, so editing the generator never reuses stale weights.
function generatorHash(): string {
  const h = createHash('sha256')
  for (const f of readdirSync(GENERATOR_DIR).sort())
    h.update(f).update(readFileSync(join(GENERATOR_DIR, f)))
  return h.digest('hex').slice(0, 12)
}

type PlainOptions = Omit<CheckpointOptions, 'editTensors' | 'onProgress'>

/** A checkpoint for `opts`, written on first use and shared afterwards. */
export function cachedCheckpoint(name: string, opts: PlainOptions): string {
  const key = createHash('sha256')
    .update(generatorHash())
    .update(JSON.stringify(opts))
    .digest('hex')
    .slice(0, 16)
  const dir = join(CHECKPOINT_ROOT, `${name}-${key}`)
  if (existsSync(join(dir, 'config.json'))) return dir
  mkdirSync(CHECKPOINT_ROOT, { recursive: true })
  const tmp = mkdtempSync(join(CHECKPOINT_ROOT, `.${name}-`))
  writeCheckpoint(tmp, opts)
  try {
    renameSync(tmp, dir)
  } catch {
    // Another process won the race; its copy is identical.
    rmSync(tmp, { recursive: true, force: true })
  }
  return dir
}

/** A throwaway checkpoint (bad-model tests edit files after writing); removed by the caller. */
export function freshCheckpoint(opts: CheckpointOptions): string {
  mkdirSync(CHECKPOINT_ROOT, { recursive: true })
  const dir = mkdtempSync(join(CHECKPOINT_ROOT, '.fresh-'))
  writeCheckpoint(dir, opts)
  return dir
}

// Shapes shared by the parity and engine tests. Small vocab where tokenizer ids are not needed.
export const PARITY_05B: PlainOptions = {
  preset: 'tiny',
  overrides: {
    vocab_size: 512,
    hidden_size: 128,
    num_attention_heads: 16,
    num_key_value_heads: 2, // group 8, as the 0.5B
    intermediate_size: 256,
    dim_model_base: 32, // logit divisor 4, as the 0.5B
    num_hidden_layers: 4, // residual scale 1.4 / 2 = 0.7, far enough from 1 to matter
  },
  seed: 1,
}

export const PARITY_8B: PlainOptions = {
  preset: 'tiny-8b',
  // hidden 256, 32 heads / 2 KV (group 16), untied, eps 1e-6, divisor 16; 3 layers: residual scale
  // 0.81
  overrides: { vocab_size: 512, num_hidden_layers: 3 },
  seed: 2,
}

export const SMALL: PlainOptions = {
  preset: 'tiny',
  overrides: { vocab_size: 256, num_hidden_layers: 1 },
  seed: 3,
}

/** LongRoPE with long != short, max 512 > original 128: mscale != 1 and the long factors apply. */
export const LONGROPE: PlainOptions = {
  preset: 'tiny',
  overrides: {
    vocab_size: 256,
    max_position_embeddings: 512,
    rope_scaling: {
      rope_type: 'longrope',
      original_max_position_embeddings: 128,
      short_factor: [1.0, 1.5, 3.0, 8.0],
      long_factor: [1.2, 2.5, 6.0, 20.0],
    },
  },
  seed: 4,
}

/** Deterministic token ids in [lo, hi) for prompts. */
export function promptTokens(n: number, hi: number, seed = 7, lo = 3): number[] {
  let s = seed >>> 0 || 1
  return Array.from({ length: n }, () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return lo + (s % (hi - lo))
  })
}
