/**
 * Readers and writers of the ABI structs laid out in layouts.ts, with DataView at fixed offsets.
 */
import {
  eventLayout,
  MAX_EOS_IDS,
  MAX_TOP_LOGPROBS,
  modelInfoLayout,
  structSizes,
  type Field,
  type Layout,
  type Scalar,
  type StructName,
} from './layouts'

export * from './layouts'

/** A zeroed struct buffer with its own ArrayBuffer (never a pooled slice: native code writes into it). */
export function newStruct(name: StructName): Uint8Array {
  const buf = new Uint8Array(new ArrayBuffer(structSizes[name]))
  new DataView(buf.buffer).setUint32(0, structSizes[name], true)
  return buf
}

/** The scalar fields of a layout (arrays and pads have their own readers). */
export type Values<L extends Layout> = {
  -readonly [K in keyof L as L[K] extends readonly [number, Scalar, string] ? K : never]: number
}

const isScalar = (field: Field) => field.length === 3

/** Reads every scalar field of a layout; 64-bit fields come back as numbers (all counts and bytes fit in 2^53). */
export function readStruct<L extends Layout>(buf: Uint8Array, layout: L): Values<L> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const out: Record<string, number> = {}
  for (const [name, field] of Object.entries(layout)) {
    if (isScalar(field)) out[name] = readField(view, field[0], field[1])
  }
  return out as Values<L>
}

/** Writes the given fields (undefined ones keep the value already in buf, i.e. the library default). */
export function writeStruct<L extends Layout>(buf: Uint8Array, layout: L, values: Partial<Values<L>>): Uint8Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined) continue
    const field = layout[name]
    if (!field || !isScalar(field)) throw new TypeError(`unknown struct field '${name}'`)
    checkRange(field[2], field[1], value as number)
    writeField(view, field[0], field[1], value as number)
  }
  return buf
}

function readField(view: DataView, offset: number, kind: Scalar): number {
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

const INT_RANGES: Record<Exclude<Scalar, 'f32'>, [number | bigint, number | bigint]> = {
  u8: [0, 255],
  i32: [-(2 ** 31), 2 ** 31 - 1],
  u32: [0, 2 ** 32 - 1],
  i64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  u64: [0, Number.MAX_SAFE_INTEGER],
}

/**
 * A value the field cannot hold exactly is refused (a RangeError naming the C field), never wrapped: 2^31 written
 * into an int32 would become negative, 2^32-1 would become -1.
 */
function checkRange(cName: string, kind: Scalar, value: number): void {
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new RangeError(`${cName}: ${String(value)} is not a number`)
  }
  if (kind === 'f32') {
    if (Number.isFinite(value) && Math.abs(value) > 3.4028234663852886e38) {
      throw new RangeError(`${cName}: ${value} does not fit a float32`)
    }
    return
  }
  const [lo, hi] = INT_RANGES[kind]
  if (!Number.isInteger(value) || value < lo || value > hi) {
    throw new RangeError(`${cName}: ${value} is not an integer in [${lo}, ${hi}] (${kind})`)
  }
}

function writeField(view: DataView, offset: number, kind: Scalar, value: number): void {
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
      return view.setBigInt64(offset, BigInt(value), true)
    case 'u64':
      return view.setBigUint64(offset, BigInt(value), true)
  }
}

export function readEosIds(buf: Uint8Array, nEos: number): number[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const ids: number[] = []
  for (let i = 0; i < Math.min(nEos, MAX_EOS_IDS); i++) {
    ids.push(view.getInt32(modelInfoLayout.eosTokenIds[0] + 4 * i, true))
  }
  return ids
}

/** A NUL-terminated char array field (the whole array when it has no NUL). */
export function readCString(buf: Uint8Array, [offset, , , count = 1]: Field): string {
  const bytes = buf.subarray(offset, offset + count)
  const end = bytes.indexOf(0)
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end))
}

// struct minicpm_event, read on the token path: fixed offsets, no generic loop.
const EVENT_SIZE = structSizes.event
const EV_FINISH = eventLayout.finishReason[0]
const EV_LOGPROB = eventLayout.logprob[0]
const EV_N_TOP = eventLayout.nTop[0]
const EV_TOP_TOKENS = eventLayout.topTokens[0]
const EV_TOP_LOGPROBS = eventLayout.topLogprobs[0]
const EV_T_US = eventLayout.tUs[0]

export const finishNames = ['none', 'stop', 'length', 'cancelled', 'error'] as const
export type NativeFinish = (typeof finishNames)[number]

export interface NativeEvent {
  token: number
  finish: NativeFinish
  logprob: number
  top: Array<{ token: number; logprob: number }>
  tUs: number
  /** The request's draft trees verified and drafts kept so far (speculative decoding). */
  specVerifies: number
  specAccepted: number
}

const NO_TOP: Array<{ token: number; logprob: number }> = []

/** Decodes event i of a drain buffer (copies: the buffer is reused by the next drain). */
export function readEvent(view: DataView, i: number): NativeEvent {
  const base = i * EVENT_SIZE
  const nTop = Math.min(view.getInt32(base + EV_N_TOP, true), MAX_TOP_LOGPROBS)
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
    token: view.getInt32(base + eventLayout.token[0], true),
    finish: finishNames[view.getInt32(base + EV_FINISH, true)] ?? 'error',
    logprob: view.getFloat32(base + EV_LOGPROB, true),
    top,
    tUs: Number(view.getBigInt64(base + EV_T_US, true)),
    specVerifies: view.getInt32(base + eventLayout.specVerifies[0], true),
    specAccepted: view.getInt32(base + eventLayout.specAccepted[0], true),
  }
}

export const dtypeCodes = { f32: 0, f16: 1, bf16: 2 } as const
export type KvDtype = keyof typeof dtypeCodes
export const dtypeNames = ['f32', 'f16', 'bf16', 'q8', 'q4'] as const

export const backendNames = ['auto', 'cpu', 'cuda'] as const
export type Backend = (typeof backendNames)[number]

/** enum minicpm_backend as a name ('backend<N>' for a code these bindings do not know). */
export function backendName(code: number): string {
  return backendNames[code] ?? `backend${code}`
}

export const requestStates = ['waiting', 'prefilling', 'decoding', 'finished'] as const
export type RequestState = (typeof requestStates)[number]
