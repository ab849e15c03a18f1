/**
 * The real model the server suites run against: the 'tiny' preset checkpoint (real tokenizer, random
 * weights) loaded through loadModel(), shared by every test in a file.
 */
import { loadModel, type LoadOptions, type Model } from '../../src/index.ts'
import { cachedCheckpoint } from './checkpoints.ts'

export const SERVER_CTX = 256
/** Loading may first write the checkpoint (seconds on a busy machine): hooks get this long. */
export const LOAD_TIMEOUT_MS = 120_000

/** Loads the tiny checkpoint (written on first use) with a small context so limits are easy to hit. */
export function loadTinyModel(opts: LoadOptions = {}): Promise<Model> {
  const dir = cachedCheckpoint('server-tiny', { preset: 'tiny', seed: 5 })
  return loadModel(dir, { nCtx: SERVER_CTX, nThreads: 2, nBatchMax: 32, ...opts })
}
