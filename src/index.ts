/**
 * The library API: load a MiniCPM4 model directory and stream generations from it.
 *
 * @example
 * const model = await loadModel() // the generated random-weight default model
 * for await (const ev of model.generate({ prompt: 'Hello', maxTokens: 16 })) if (ev.type === 'delta') write(ev.text)
 * model.dispose()
 */
export { DEFAULT_KV_DTYPE, KV_DTYPES, loadModel, resolveModelDir, type LoadOptions, type Model } from './runtime/load'
export { ensureDefaultModel, DEFAULT_MODEL_ID, cacheRoot } from './runtime/default-model'
export { readModelDir, samplingDefaults } from './runtime/model-dir'
export { saveQuantized, type SaveQuantizedOptions, type SaveQuantizedResult } from './runtime/save'
export { NativeError } from '../ffi/index'
export type * from './types'
