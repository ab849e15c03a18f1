/**
 * NativeModel: weights + config loaded by minicpm_model_load, immutable, shared by contexts and engines.
 */
import type { Pointer } from 'bun:ffi'
import { check, nativeError } from './errors'
import { NativeHandle } from './handle'
import { cString, lib } from './library'
import {
  dtypeNames,
  modelInfoLayout,
  modelParamsLayout,
  newStruct,
  readEosIds,
  readStruct,
  writeStruct,
} from './structs'

export interface NativeModelInfo {
  nVocab: number
  nCtxTrain: number
  nEmbd: number
  nLayer: number
  nHead: number
  nHeadKv: number
  nHeadDim: number
  nFf: number
  bosTokenId: number
  eosTokenIds: number[]
  weightDtype: string // 'f32' | 'f16' | 'bf16' (or 'dtype<N>' for a code these bindings do not know)
  tiedHead: boolean
  rmsNormEps: number
  ropeTheta: number
  scaleEmb: number
  residualScale: number
  logitDivisor: number
  ropeMscale: number
  nParams: number
  weightBytes: number
  kvBytesPerToken: number
}

export class NativeModel extends NativeHandle {
  readonly dir: string

  private constructor(ptr: Pointer, dir: string) {
    super('NativeModel', ptr, (p) => lib().minicpm_model_free(p))
    this.dir = dir
  }

  /** Loads a hub-layout model directory; throws NativeError (io, bad_model, unsupported, ...). */
  static load(dir: string, opts: { useMmap?: boolean; nThreads?: number } = {}): NativeModel {
    const l = lib()
    const params = newStruct('model_params')
    l.minicpm_model_default_params(params)
    writeStruct(params, modelParamsLayout, {
      useMmap: opts.useMmap === undefined ? undefined : opts.useMmap ? 1 : 0,
      nThreads: opts.nThreads,
    })
    const out = new BigUint64Array(1)
    const status = l.minicpm_model_load(cString(dir), params, new Uint8Array(out.buffer))
    if (status !== 0 || out[0] === 0n) throw nativeError(status, `cannot load model ${dir}`)
    return new NativeModel(Number(out[0]) as Pointer, dir)
  }

  /** The native pointer, for contexts and engines created over this model. */
  get ptr(): Pointer {
    return this.guard()
  }

  info(): NativeModelInfo {
    const buf = newStruct('model_info')
    check(lib().minicpm_model_info(this.guard(), buf), 'model info')
    const raw = readStruct(buf, modelInfoLayout)
    const { size: _size, nEos, weightDtype, tiedHead, ...rest } = raw
    return {
      ...rest,
      eosTokenIds: readEosIds(buf, nEos),
      weightDtype: dtypeNames[weightDtype] ?? `dtype${weightDtype}`,
      tiedHead: tiedHead !== 0,
    }
  }
}
