/**
 * NativeModel: weights + config loaded by minicpm_model_load, immutable, shared by contexts and engines.
 */
import type { Pointer } from 'bun:ffi'
import { check, nativeError } from './errors'
import { NativeHandle } from './handle'
import { cString, lib, readCopiedString } from './library'
import {
  backendName,
  backendNames,
  dtypeNames,
  modelInfoLayout,
  modelParamsLayout,
  newStruct,
  readCString,
  readEosIds,
  readStruct,
  writeStruct,
  type Backend,
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
  backend: string // 'cpu' | 'cuda': where the model runs
  backendName: string // e.g. 'cpu'
  sparseConfig: boolean // config.json has a sparse_config
  sparseAttention: 'off' | 'hf' | 'v2' // InfLLM v2 as loaded (enum minicpm_sparse_mode OFF, HF, V2)
  quantizationConfig: boolean // config.json has a quantization_config
  // CUDA (0 on the CPU): device memory free and total at load, the device arena's size and what is left in it
  deviceMemoryFree: number
  deviceMemoryTotal: number
  deviceArenaBytes: number
  deviceArenaFree: number
}

/** On-the-fly weight quantization at load (round to nearest): q8 symmetric, q4 asymmetric (minicpm.h). */
export type QuantizeType = 'q8' | 'q4'
export const QUANTIZE_TYPES = ['q8', 'q4'] as const satisfies readonly QuantizeType[]
/** InfLLM v2 sparse attention per load (enum minicpm_sparse_mode): 'auto' follows config.json. */
export type SparseMode = 'auto' | 'off' | 'hf' | 'v2'
export const SPARSE_MODES = ['auto', 'off', 'hf', 'v2'] as const satisfies readonly SparseMode[]

export interface NativeModelOptions {
  /** 'auto' (default): as config.json says; 'off': dense; 'hf' / 'v2': on with that variant. */
  sparse?: SparseMode
  useMmap?: boolean
  nThreads?: number
  backend?: Backend
  quantize?: QuantizeType
  /** Input features per scale: a positive multiple of 32 (default 128). */
  quantGroupSize?: number
  /** Quantize the LM head (the embedding when tied) too; default true. */
  quantizeHead?: boolean
  /** CUDA: bytes of the device arena (weights, KV, activations); default 90% of the free device memory (half on Jetson). */
  deviceMemory?: number
  /** CUDA: replay decode steps as CUDA graphs (default true). */
  cudaGraphs?: boolean
}

export class NativeModel extends NativeHandle {
  readonly dir: string

  private constructor(ptr: Pointer, dir: string) {
    super('NativeModel', ptr, (p) => lib().minicpm_model_free(p))
    this.dir = dir
  }

  /** Loads a hub-layout model directory; throws NativeError (io, bad_model, unsupported, ...). */
  static load(dir: string, opts: NativeModelOptions = {}): NativeModel {
    const l = lib()
    const params = newStruct('model_params')
    l.minicpm_model_default_params(params)
    writeStruct(params, modelParamsLayout, {
      useMmap: opts.useMmap === undefined ? undefined : opts.useMmap ? 1 : 0,
      nThreads: opts.nThreads,
      backend: opts.backend === undefined ? undefined : backendNames.indexOf(opts.backend),
      quantize: opts.quantize === undefined ? undefined : opts.quantize === 'q8' ? 3 : 4,
      quantGroupSize: opts.quantGroupSize,
      quantizeHead: opts.quantizeHead === undefined ? undefined : opts.quantizeHead ? 1 : 0,
      sparse: opts.sparse === undefined ? undefined : SPARSE_MODES.indexOf(opts.sparse),
      deviceMemory: opts.deviceMemory,
      cudaGraphs: opts.cudaGraphs === undefined ? undefined : opts.cudaGraphs ? 1 : 0,
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
    const { size: _size, nEos, weightDtype, tiedHead, backend, sparseConfig, sparseAttention, quantizationConfig, ...rest } =
      raw
    return {
      ...rest,
      eosTokenIds: readEosIds(buf, nEos),
      weightDtype: dtypeNames[weightDtype] ?? `dtype${weightDtype}`,
      tiedHead: tiedHead !== 0,
      backend: backendName(backend),
      backendName: readCString(buf, modelInfoLayout.backendName),
      sparseConfig: sparseConfig !== 0,
      sparseAttention: sparseAttention === 2 ? 'hf' : sparseAttention === 3 ? 'v2' : 'off',
      quantizationConfig: quantizationConfig !== 0,
    }
  }

  /**
   * Writes the quantized weights and config.json into the existing directory outDir (native minicpm_model_save;
   * q4 as GPTQ, q8 as minicpm_q8). See saveQuantized() in src/runtime for a complete directory with the tokenizer.
   */
  save(outDir: string): void {
    check(lib().minicpm_model_save(this.guard(), cString(outDir)), `save model to ${outDir}`)
  }

  /** What the load did not honour and what runs instead, one line each ([] when nothing). */
  warnings(): string[] {
    const model = this.guard()
    let status = 0
    const text = readCopiedString((buf, cap) => {
      const n = lib().minicpm_model_warnings(model, buf, cap)
      if (n < 0) status = n
      return Math.max(n, 0)
    })
    check(status, 'model warnings')
    return text.split('\n').filter((line) => line.length > 0)
  }
}
