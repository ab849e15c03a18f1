/**
 * NativeContext: synchronous evaluation (tests and tools). Each call blocks the JS thread for the compute,
 * so servers use NativeEngine instead.
 */
import type { Pointer } from 'bun:ffi'
import { check, int32Array, nativeError } from './errors'
import { NativeHandle } from './handle'
import { lib } from './library'
import { contextParamsLayout, dtypeCodes, newStruct, writeStruct, type KvDtype } from './structs'
import type { NativeModel } from './model'

export interface NativeContextOptions {
  nCtx?: number
  nSeqMax?: number
  nThreads?: number
  kvDtype?: KvDtype
  nChunk?: number
  useReference?: boolean
  /** Fast ops on the CPU kernels with exact f32 products (context_params.exact_kernels). */
  exactKernels?: boolean
}

export interface EvalOptions {
  seqIds?: ArrayLike<number> // sequence of each token; default all 0
  output?: 'last' | 'all' | ArrayLike<number> // which tokens get a logits row (indices into the batch)
}

export class NativeContext extends NativeHandle {
  readonly #nVocab: number

  constructor(model: NativeModel, opts: NativeContextOptions = {}) {
    const l = lib()
    const params = newStruct('context_params')
    l.minicpm_context_default_params(params)
    writeStruct(params, contextParamsLayout, {
      nCtx: opts.nCtx,
      nSeqMax: opts.nSeqMax,
      nThreads: opts.nThreads,
      kvDtype: opts.kvDtype === undefined ? undefined : kvDtypeCode(opts.kvDtype),
      nChunk: opts.nChunk,
      useReference: opts.useReference === undefined ? undefined : opts.useReference ? 1 : 0,
      exactKernels: opts.exactKernels === undefined ? undefined : opts.exactKernels ? 1 : 0,
    })
    const out = new BigUint64Array(1)
    const status = l.minicpm_context_init(model.ptr, params, new Uint8Array(out.buffer))
    if (status !== 0 || out[0] === 0n) throw nativeError(status, 'cannot create context')
    super('NativeContext', Number(out[0]) as Pointer, (p) => lib().minicpm_context_free(p), model)
    this.#nVocab = model.info().nVocab
  }

  /** Appends tokens to their sequences; returns one copied row of n_vocab logits per requested output. */
  eval(tokens: ArrayLike<number>, opts: EvalOptions = {}): Float32Array[] {
    const ctx = this.guard()
    const n = tokens.length
    const tok = int32Array(tokens, 'tokens')
    let seq: Int32Array | null = null
    if (opts.seqIds !== undefined) {
      if (opts.seqIds.length !== n) throw new RangeError(`seqIds has ${opts.seqIds.length} entries for ${n} tokens`)
      seq = int32Array(opts.seqIds, 'seqIds')
    }
    const { mask, rows } = outputMask(n, opts.output ?? 'last')
    const nVocab = this.#nVocab
    const logits = new Float32Array(Math.max(rows, 1) * nVocab)
    const got = lib().minicpm_context_eval(ctx, tok, seq, mask, n, logits, BigInt(logits.length))
    if (got < 0) throw nativeError(got, 'eval')
    const out: Float32Array[] = []
    for (let r = 0; r < got; r++) out.push(logits.subarray(r * nVocab, (r + 1) * nVocab))
    return out
  }

  seqLen(seq: number): number {
    const n = lib().minicpm_context_seq_len(this.guard(), seq)
    if (n < 0) throw nativeError(n, `seq_len of sequence ${seq}`)
    return n
  }

  truncate(seq: number, nKeep: number): void {
    check(lib().minicpm_context_seq_truncate(this.guard(), seq, nKeep), `truncate sequence ${seq}`)
  }
}

export function kvDtypeCode(name: string): number {
  const code = dtypeCodes[name as KvDtype]
  if (code === undefined) throw new RangeError(`kvDtype must be one of f32, bf16, f16 (got '${name}')`)
  return code
}

function outputMask(n: number, output: 'last' | 'all' | ArrayLike<number>): { mask: Uint8Array | null; rows: number } {
  if (output === 'last') return { mask: null, rows: n > 0 ? 1 : 0 }
  const mask = new Uint8Array(Math.max(n, 1))
  if (output === 'all') {
    mask.fill(1)
    return { mask, rows: n }
  }
  let rows = 0
  for (let k = 0; k < output.length; k++) {
    const i = output[k]!
    if (!Number.isInteger(i) || i < 0 || i >= n) throw new RangeError(`output index ${i} outside the batch of ${n}`)
    if (mask[i] === 0) rows++
    mask[i] = 1
  }
  return { mask, rows }
}
