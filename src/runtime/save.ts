/**
 * saveQuantized(): quantize once, serve many times. Loads a checkpoint with on-the-fly quantization (or a
 * quantized checkpoint as is) on the CPU backend and writes a hub-layout directory that loads with no
 * quantization work: q4 as GPTQ int4 in the AutoGPTQ layout (qweight / qzeros / scales / g_idx), q8 in the
 * project's `minicpm_q8` layout (`.qweight` I8 [N, K] + `.scales` F16 [N, groups]); config.json gets the
 * quantization_config, and every other file of the source directory (tokenizer, generation config, chat
 * template) is copied as is.
 */
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'

import { NativeModel, type QuantizeType } from '../../ffi/index'

export interface SaveQuantizedOptions {
  quantize?: QuantizeType // omitted: the source must already be quantized
  quantGroupSize?: number // default 128
  quantizeHead?: boolean // default true
}

export interface SaveQuantizedResult {
  dir: string
  weightDtype: string
  weightBytes: number
  nParams: number
  bitsPerWeight: number
  quantizeMs: number // the load with on-the-fly quantization
  saveMs: number
  copied: string[] // files copied from the source directory
}

// Weight files and configs that the save writes itself.
const OWN = (name: string) =>
  name === 'config.json' || name === 'quantize_config.json' || /^model.*\.safetensors(\.index\.json)?$/.test(name)

/** Writes the quantized form of the model in `src` into `out` (created if missing). */
export function saveQuantized(src: string, out: string, opts: SaveQuantizedOptions = {}): SaveQuantizedResult {
  if (resolve(src) === resolve(out)) throw new Error('saveQuantized: the output directory must differ from the source')
  mkdirSync(out, { recursive: true })
  // weights of an earlier save in another layout (shards, a Marlin file) would win over the new model.safetensors
  for (const name of readdirSync(out)) if (OWN(name) || name === 'model_gptq.safetensors') rmSync(join(out, name))
  const t0 = performance.now()
  using model = NativeModel.load(src, {
    backend: 'cpu',
    quantize: opts.quantize,
    quantGroupSize: opts.quantGroupSize,
    quantizeHead: opts.quantizeHead,
  })
  const t1 = performance.now()
  model.save(out)
  const copied: string[] = []
  for (const name of readdirSync(src)) {
    if (OWN(name) || !statSync(join(src, name)).isFile()) continue
    copyFileSync(join(src, name), join(out, name))
    copied.push(name)
  }
  const info = model.info()
  return {
    dir: out,
    weightDtype: info.weightDtype,
    weightBytes: info.weightBytes,
    nParams: info.nParams,
    bitsPerWeight: (info.weightBytes * 8) / info.nParams,
    quantizeMs: t1 - t0,
    saveMs: performance.now() - t1,
    copied,
  }
}
