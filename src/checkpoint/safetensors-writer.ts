/**
 * Streaming safetensors writer: the header is computed from the tensor specs up front, then each
 * tensor's bytes are produced chunk by chunk, so a checkpoint of any size needs only one chunk of
 * memory. Format: u64 little-endian header length, JSON header (space-padded to 8 bytes), then the
 * data section.
 */
import { closeSync, openSync, writeSync } from 'node:fs'

export type SafetensorsDtype = 'BF16' | 'F16' | 'F32' | 'F64' | 'I64' | 'I32' | 'U8'

export const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  BF16: 2,
  F16: 2,
  F32: 4,
  F64: 8,
  I64: 8,
  I32: 4,
  U8: 1,
}

export interface TensorSpec {
  name: string
  dtype: SafetensorsDtype
  shape: number[]
}

export function tensorBytes(spec: TensorSpec): number {
  return spec.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[spec.dtype]
}

/** Header bytes (length prefix included) for tensors laid out back to back in the given order. */
export function encodeHeader(
  specs: TensorSpec[],
  metadata: Record<string, string> = { format: 'pt' },
): Uint8Array {
  const obj: Record<string, unknown> = { __metadata__: metadata }
  let offset = 0
  for (const s of specs) {
    const end = offset + tensorBytes(s)
    obj[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, end] }
    offset = end
  }
  let json = JSON.stringify(obj)
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const body = new TextEncoder().encode(json)
  const out = new Uint8Array(8 + body.length)
  new DataView(out.buffer).setBigUint64(0, BigInt(body.length), true)
  out.set(body, 8)
  return out
}

/** Receives one tensor's bytes in order; the writer checks the total against the spec. */
export type TensorFiller = (spec: TensorSpec, write: (bytes: Uint8Array) => void) => void

export function writeSafetensors(path: string, specs: TensorSpec[], fill: TensorFiller): number {
  const fd = openSync(path, 'w')
  try {
    const header = encodeHeader(specs)
    writeSync(fd, header)
    let total = header.length
    for (const spec of specs) {
      let written = 0
      fill(spec, (bytes) => {
        let off = 0
        while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off)
        written += bytes.length
      })
      if (written !== tensorBytes(spec)) {
        throw new Error(
          `safetensors writer: ${spec.name} got ${written} bytes, expected ${tensorBytes(spec)}`,
        )
      }
      total += written
    }
    return total
  } finally {
    closeSync(fd)
  }
}
