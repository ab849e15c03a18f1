/**
 * The default model: a tiny MiniCPM4-layout checkpoint with the real tokenizer and deterministic random
 * weights, generated once into the cache so that everything runs with no download. Its output is noise.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { writeCheckpoint } from '../checkpoint/write-checkpoint'

export const DEFAULT_MODEL_ID = 'minicpm4-random-tiny'

export function cacheRoot(): string {
  return process.env.MINICPM_CACHE || join(homedir(), '.cache', 'minicpm-edge')
}

/** The default model's directory, generated on first use. */
export function ensureDefaultModel(onProgress?: (phase: string, done: number, total: number) => void): string {
  const dir = join(cacheRoot(), DEFAULT_MODEL_ID)
  if (existsSync(join(dir, 'config.json'))) return dir
  // Build beside the final path and rename: a concurrent or interrupted run never sees half a checkpoint.
  const tmp = `${dir}.tmp-${process.pid}`
  mkdirSync(cacheRoot(), { recursive: true })
  try {
    writeCheckpoint(tmp, {
      preset: 'tiny',
      seed: 0,
      onProgress: (done, total) => onProgress?.('generate default model', done, total),
    })
    // An incomplete leftover (no config.json) would block the rename.
    if (!existsSync(join(dir, 'config.json'))) rmSync(dir, { recursive: true, force: true })
    renameSync(tmp, dir)
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true })
    if (!existsSync(join(dir, 'config.json'))) throw e // else another process won the race
  }
  return dir
}
