/**
 * The reference's own safetensors reader (no engine code): reads a whole file and decodes tensors
 * to Float64Array. Only what the reference needs: BF16, F16 and F32.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

export interface StoredTensor {
  dtype: string
  shape: number[]
  data: Float64Array
}

function decode(dtype: string, bytes: Uint8Array, name: string): Float64Array {
  // Copy first: the offsets inside the file need not be aligned for the typed-array views below.
  const buf = new Uint8Array(bytes).buffer
  let src: ArrayLike<number>
  if (dtype === 'F32') src = new Float32Array(buf)
  else if (dtype === 'F16') src = new Float16Array(buf)
  else if (dtype === 'BF16') {
    const u16 = new Uint16Array(buf)
    const u32 = new Uint32Array(u16.length)
    for (let i = 0; i < u16.length; i++) u32[i] = u16[i]! << 16
    src = new Float32Array(u32.buffer)
  } else throw new Error(`reference reader: ${name} has dtype ${dtype}, expected BF16, F16 or F32`)
  return Float64Array.from(src)
}

export function readSafetensors(
  path: string,
  out: Map<string, StoredTensor> = new Map(),
): Map<string, StoredTensor> {
  const file = readFileSync(path)
  const n = Number(new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true))
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n))) as Record<
    string,
    unknown
  >
  const base = 8 + n
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const { dtype, shape, data_offsets } = entry as {
      dtype: string
      shape: number[]
      data_offsets: [number, number]
    }
    const bytes = file.subarray(base + data_offsets[0], base + data_offsets[1])
    out.set(name, { dtype, shape, data: decode(dtype, bytes, name) })
  }
  return out
}

/** All tensors of a hub directory: model.safetensors, or the shards its index.json names. */
export function readCheckpointTensors(dir: string): Map<string, StoredTensor> {
  const index = join(dir, 'model.safetensors.index.json')
  if (!existsSync(index)) return readSafetensors(join(dir, 'model.safetensors'))
  const map = JSON.parse(readFileSync(index, 'utf8')).weight_map as Record<string, string>
  const out = new Map<string, StoredTensor>()
  for (const f of new Set(Object.values(map))) readSafetensors(join(dir, f), out)
  return out
}
