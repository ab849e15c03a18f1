/**
 * Byte layouts of the ABI structs of minicpm.h (x86-64 / arm64 SysV alignment), read and written with
 * DataView at fixed offsets. library.ts asserts every size against minicpm_struct_size() at load.
 */

export const MAX_TOP_LOGPROBS = 20
export const MAX_EOS_IDS = 8

type Kind = 'u8' | 'i32' | 'u32' | 'f32' | 'i64' | 'u64'
type Layout = Record<string, readonly [offset: number, kind: Kind]>

export const modelParamsLayout = {
  size: [0, 'u32'],
  nThreads: [4, 'i32'],
  useMmap: [8, 'u8'],
} as const satisfies Layout

export const modelInfoLayout = {
  size: [0, 'u32'],
  nVocab: [4, 'i32'],
  nCtxTrain: [8, 'i32'],
  nEmbd: [12, 'i32'],
  nLayer: [16, 'i32'],
  nHead: [20, 'i32'],
  nHeadKv: [24, 'i32'],
  nHeadDim: [28, 'i32'],
  nFf: [32, 'i32'],
  bosTokenId: [36, 'i32'],
  nEos: [40, 'i32'],
  // eos_token_ids[8] at 44
  weightDtype: [76, 'i32'],
  tiedHead: [80, 'u8'],
  rmsNormEps: [84, 'f32'],
  ropeTheta: [88, 'f32'],
  scaleEmb: [92, 'f32'],
  residualScale: [96, 'f32'],
  logitDivisor: [100, 'f32'],
  ropeMscale: [104, 'f32'],
  nParams: [112, 'u64'],
  weightBytes: [120, 'u64'],
  kvBytesPerToken: [128, 'u64'],
} as const satisfies Layout
const EOS_IDS_OFFSET = 44

export const contextParamsLayout = {
  size: [0, 'u32'],
  nCtx: [4, 'i32'],
  nSeqMax: [8, 'i32'],
  nThreads: [12, 'i32'],
  kvDtype: [16, 'i32'],
  nChunk: [20, 'i32'],
  useReference: [24, 'u8'],
} as const satisfies Layout

export const engineParamsLayout = {
  size: [0, 'u32'],
  nThreads: [4, 'i32'],
  nBatchMax: [8, 'i32'],
  nChunk: [12, 'i32'],
  nCtx: [16, 'i32'],
  nQueueMax: [20, 'i32'],
  kvDtype: [24, 'i32'],
  kvBytes: [32, 'u64'],
} as const satisfies Layout

export const samplingParamsLayout = {
  size: [0, 'u32'],
  temperature: [4, 'f32'],
  topP: [8, 'f32'],
  minP: [12, 'f32'],
  topK: [16, 'i32'],
  repetitionPenalty: [20, 'f32'],
  presencePenalty: [24, 'f32'],
  frequencyPenalty: [28, 'f32'],
  penaltyLastN: [32, 'i32'],
  maxTokens: [36, 'i32'],
  topLogprobs: [40, 'i32'],
  logprobs: [44, 'u8'],
  ignoreEos: [45, 'u8'],
  seed: [48, 'u64'],
} as const satisfies Layout

export const requestInfoLayout = {
  size: [0, 'u32'],
  state: [4, 'i32'],
  nPrompt: [8, 'i32'],
  nPrefilled: [12, 'i32'],
  nGenerated: [16, 'i32'],
  tSubmitUs: [24, 'i64'],
  tAdmitUs: [32, 'i64'],
  tFirstTokenUs: [40, 'i64'],
  tEndUs: [48, 'i64'],
} as const satisfies Layout

export const engineStatsLayout = {
  size: [0, 'u32'],
  running: [4, 'i32'],
  waiting: [8, 'i32'],
  undrained: [12, 'i32'],
  kvTokensUsed: [16, 'i32'],
  kvTokensTotal: [20, 'i32'],
  steps: [24, 'u64'],
  promptTokens: [32, 'u64'],
  generatedTokens: [40, 'u64'],
  errors: [48, 'u64'],
} as const satisfies Layout

/** sizeof() of each struct as laid out above, keyed by the names minicpm_struct_size() knows. */
export const structSizes = {
  model_params: 16,
  model_info: 136,
  context_params: 32,
  engine_params: 40,
  sampling_params: 56,
  event: 184,
  request_info: 56,
  engine_stats: 56,
} as const
export type StructName = keyof typeof structSizes

/** A zeroed struct buffer with its own ArrayBuffer (never a pooled slice: native code writes into it). */
export function newStruct(name: StructName): Uint8Array {
  const buf = new Uint8Array(new ArrayBuffer(structSizes[name]))
  new DataView(buf.buffer).setUint32(0, structSizes[name], true)
  return buf
}

export type Values<L extends Layout> = { [K in keyof L]: number }

/** Reads every field of a layout; 64-bit fields come back as numbers (all counts and bytes fit in 2^53). */
export function readStruct<L extends Layout>(buf: Uint8Array, layout: L): Values<L> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const out: Record<string, number> = {}
  for (const [name, [offset, kind]] of Object.entries(layout)) {
    out[name] = readField(view, offset, kind)
  }
  return out as Values<L>
}

/** Writes the given fields (undefined ones keep the value already in buf, i.e. the library default). */
export function writeStruct<L extends Layout>(buf: Uint8Array, layout: L, values: Partial<Values<L>>): Uint8Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined) continue
    const field = layout[name]
    if (!field) throw new TypeError(`unknown struct field '${name}'`)
    writeField(view, field[0], field[1], value as number)
  }
  return buf
}

function readField(view: DataView, offset: number, kind: Kind): number {
  switch (kind) {
    case 'u8':
      return view.getUint8(offset)
    case 'i32':
      return view.getInt32(offset, true)
    case 'u32':
      return view.getUint32(offset, true)
    case 'f32':
      return view.getFloat32(offset, true)
    case 'i64':
      return Number(view.getBigInt64(offset, true))
    case 'u64':
      return Number(view.getBigUint64(offset, true))
  }
}

function writeField(view: DataView, offset: number, kind: Kind, value: number): void {
  switch (kind) {
    case 'u8':
      return view.setUint8(offset, value)
    case 'i32':
      return view.setInt32(offset, value, true)
    case 'u32':
      return view.setUint32(offset, value, true)
    case 'f32':
      return view.setFloat32(offset, value, true)
    case 'i64':
      return view.setBigInt64(offset, BigInt(Math.trunc(value)), true)
    case 'u64':
      return view.setBigUint64(offset, BigInt.asUintN(64, BigInt(Math.trunc(value))), true)
  }
}

export function readEosIds(buf: Uint8Array, nEos: number): number[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const ids: number[] = []
  for (let i = 0; i < Math.min(nEos, MAX_EOS_IDS); i++) {
    ids.push(view.getInt32(EOS_IDS_OFFSET + 4 * i, true))
  }
  return ids
}

// struct minicpm_event, read on the token path: fixed offsets, no generic loop.
const EVENT_SIZE = structSizes.event
const EV_TOP_TOKENS = 16
const EV_TOP_LOGPROBS = 96
const EV_T_US = 176

export const finishNames = ['none', 'stop', 'length', 'cancelled', 'error'] as const
export type NativeFinish = (typeof finishNames)[number]

export interface NativeEvent {
  token: number
  finish: NativeFinish
  logprob: number
  top: Array<{ token: number; logprob: number }>
  tUs: number
}

const NO_TOP: Array<{ token: number; logprob: number }> = []

/** Decodes event i of a drain buffer (copies: the buffer is reused by the next drain). */
export function readEvent(view: DataView, i: number): NativeEvent {
  const base = i * EVENT_SIZE
  const nTop = Math.min(view.getInt32(base + 12, true), MAX_TOP_LOGPROBS)
  let top = NO_TOP
  if (nTop > 0) {
    top = new Array(nTop)
    for (let k = 0; k < nTop; k++) {
      top[k] = {
        token: view.getInt32(base + EV_TOP_TOKENS + 4 * k, true),
        logprob: view.getFloat32(base + EV_TOP_LOGPROBS + 4 * k, true),
      }
    }
  }
  return {
    token: view.getInt32(base, true),
    finish: finishNames[view.getInt32(base + 4, true)] ?? 'error',
    logprob: view.getFloat32(base + 8, true),
    top,
    tUs: Number(view.getBigInt64(base + EV_T_US, true)),
  }
}

export const dtypeCodes = { f32: 0, f16: 1, bf16: 2 } as const
export type KvDtype = keyof typeof dtypeCodes
export const dtypeNames = ['f32', 'f16', 'bf16'] as const

export const requestStates = ['waiting', 'prefilling', 'decoding', 'finished'] as const
export type RequestState = (typeof requestStates)[number]
