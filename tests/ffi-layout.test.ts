/**
 * The struct layouts of ffi/layouts.ts against the library: every struct size, every field offset and size,
 * and proof that the checker catches a swapped pair of same-typed fields, a wrong size and a missing field.
 */
import { describe, expect, test } from 'bun:test'
import { structSizes } from '../ffi/index'
import { ABI_VERSION, checkAbi, cString, lib, type AbiFacts } from '../ffi/library'
import {
  contextParamsLayout,
  engineParamsLayout,
  kindBytes,
  layoutProblems,
  layouts,
  newStruct,
  readStruct,
  samplingParamsLayout,
  writeStruct,
  type Layout,
  type Scalar,
} from '../ffi/structs'

const offsetOf = (struct: string) => (field: string) =>
  lib().minicpm_struct_offset(cString(struct), cString(field))

/** A copy of a layout with the offsets of two fields exchanged. */
function swap(layout: Layout, a: string, b: string): Layout {
  const fa = layout[a]!
  const fb = layout[b]!
  return { ...layout, [a]: [fb[0], fa[1], fa[2]], [b]: [fa[0], fb[1], fb[2]] }
}

/** Value i of a sequence that differs for every field and fits its kind exactly. */
function distinct(kind: Scalar, i: number): number {
  if (kind === 'u8') return 11 + i
  if (kind === 'f32') return 0.5 + i // exact in f32
  return kindBytes[kind] === 8 ? 2 ** 40 + 1000 + i : 1000 + i
}

function readAt(view: DataView, offset: number, kind: Scalar): number {
  const read: Record<Scalar, () => number> = {
    u8: () => view.getUint8(offset),
    i32: () => view.getInt32(offset, true),
    u32: () => view.getUint32(offset, true),
    f32: () => view.getFloat32(offset, true),
    i64: () => Number(view.getBigInt64(offset, true)),
    u64: () => Number(view.getBigUint64(offset, true)),
  }
  return read[kind]()
}

describe('struct layouts', () => {
  test('every struct size matches the TypeScript layout; unknown names give 0', () => {
    for (const [name, size] of Object.entries(structSizes)) {
      const native = lib().minicpm_struct_size(cString(name))
      console.log(`sizeof ${name}: library ${native}, bindings ${size}`)
      expect(native).toBe(size)
    }
    expect(lib().minicpm_struct_size(cString('no_such_struct'))).toBe(0)
  })

  test('an ABI version, struct size or field mismatch is refused with a message naming the difference', () => {
    const name = (buf: Uint8Array) => new TextDecoder().decode(buf.subarray(0, -1))
    const sizeOf = (buf: Uint8Array) => structSizes[name(buf) as keyof typeof structSizes]
    const good: AbiFacts = {
      minicpm_abi_version: () => ABI_VERSION,
      minicpm_struct_size: sizeOf,
      minicpm_struct_offset: (s, f) => lib().minicpm_struct_offset(s, f),
    }
    expect(() => checkAbi(good, 'lib.so')).not.toThrow()
    expect(() => checkAbi({ ...good, minicpm_abi_version: () => 1 }, 'lib.so')).toThrow(
      `lib.so has ABI version 1 but these bindings expect ${ABI_VERSION}`,
    )
    const shrunk = (buf: Uint8Array) => (name(buf) === 'event' ? 176 : sizeOf(buf))
    expect(() => checkAbi({ ...good, minicpm_struct_size: shrunk }, 'lib.so')).toThrow(
      'event: library 176 bytes, bindings 192',
    )
    // The same swap as below, seen through the load-time check of the whole library.
    const swapped = { ...layouts, engine_params: swap(engineParamsLayout, 'nBatchMax', 'nChunk') }
    expect(() => checkAbi(good, 'lib.so', swapped)).toThrow('engine_params.n_batch_max: offset 12 in the bindings, 8')
  })

  test('every field offset and size of every struct matches the library', () => {
    for (const [name, layout] of Object.entries(layouts)) {
      const problems = layoutProblems(name, layout, lib().minicpm_struct_size(cString(name)), offsetOf(name))
      console.log(`${name}: ${Object.keys(layout).length} fields, problems: ${JSON.stringify(problems)}`)
      expect(problems).toEqual([])
    }
    expect(lib().minicpm_struct_offset(cString('engine_params'), cString('kv_bytes'))).toBe(32)
    // The CUDA device arena: its limit at the end of model_params, what it holds at the end of model_info.
    expect(lib().minicpm_struct_offset(cString('model_params'), cString('device_memory'))).toBe(32)
    expect(lib().minicpm_struct_offset(cString('model_info'), cString('device_arena_free'))).toBe(200)
    // CUDA graphs: the switch after the arena limit, the counters at the end of the engine stats.
    expect(lib().minicpm_struct_offset(cString('model_params'), cString('cuda_graphs'))).toBe(40)
    expect(lib().minicpm_struct_offset(cString('engine_stats'), cString('n_graph_fallbacks'))).toBe(248)
    expect(lib().minicpm_struct_offset(cString('engine_params'), cString('no_such_field'))).toBe(-1)
    expect(lib().minicpm_struct_offset(cString('no_such_struct'), cString('size'))).toBe(-1)
  })

  test('a swapped pair of same-typed fields, a wrong size or a missing field is caught, naming it', () => {
    const check = (layout: Layout) =>
      layoutProblems('engine_params', layout, structSizes.engine_params, offsetOf('engine_params'))
    const swapped = check(swap(engineParamsLayout, 'nBatchMax', 'nChunk'))
    console.log('n_batch_max <-> n_chunk:', swapped)
    expect(swapped).toEqual([
      'engine_params.n_batch_max: offset 12 in the bindings, 8 in the library',
      'engine_params.n_chunk: offset 8 in the bindings, 12 in the library',
    ])
    const wide = check({ ...engineParamsLayout, kvDtype: [24, 'u64', 'kv_dtype'] })
    console.log('kv_dtype as u64:', wide)
    expect(wide).toEqual(['engine_params.kv_dtype: 8 bytes in the bindings, 4 in the library'])
    const { pad_: _pad, ...noPad } = engineParamsLayout
    const missing = check(noPad)
    console.log('pad_ left out:', missing)
    const lacks = ' (or the bindings lack the field after it)'
    expect(missing).toEqual([`engine_params.exact_kernels: 1 bytes in the bindings, 3 in the library${lacks}`])
    const renamed = check({ ...engineParamsLayout, nCtx: [16, 'i32', 'n_context'] })
    expect(renamed).toEqual([
      'engine_params.n_context: the library has no such field',
      `engine_params.n_chunk: 4 bytes in the bindings, 8 in the library${lacks}`,
    ])
  })

  test('distinct values written through the encoder sit at the offsets the library reports', () => {
    // No export echoes a params struct back, so each field is read at minicpm_struct_offset() instead.
    for (const name of ['model_params', 'context_params', 'engine_params', 'sampling_params'] as const) {
      const layout = layouts[name]
      const scalars = Object.entries(layout).filter(([key, f]) => f.length === 3 && key !== 'size')
      const values = Object.fromEntries(scalars.map(([key, f], i) => [key, distinct(f[1], i)]))
      const buf = writeStruct(newStruct(name), layout, values)
      const view = new DataView(buf.buffer)
      const read = Object.fromEntries(
        scalars.map(([key, f]) => [key, readAt(view, offsetOf(name)(f[2]), f[1])]),
      )
      console.log(`${name}: ${JSON.stringify(read)}`)
      expect(read).toEqual(values)
      expect(new Set(Object.values(values)).size).toBe(scalars.length)
    }
  })

  test('params written at fixed offsets read back identically, defaults come from the library', () => {
    const ep = newStruct('engine_params')
    lib().minicpm_engine_default_params(ep)
    const defaults = readStruct(ep, engineParamsLayout)
    console.log('engine defaults', defaults)
    expect(defaults.size).toBe(structSizes.engine_params)
    expect(defaults.nBatchMax).toBe(64)
    expect(defaults.nChunk).toBe(256)
    expect(defaults.nQueueMax).toBe(256)
    expect(defaults.kvDtype).toBe(2) // BF16
    expect(defaults.prefixCache).toBe(1) // prefix caching on by default
    const values = {
      nThreads: 3,
      nBatchMax: 7,
      nChunk: 100,
      nCtx: 4096,
      nQueueMax: 9,
      kvDtype: 0,
      prefixCache: 0,
      exactKernels: 1,
      kvBytes: 2 ** 40 + 5,
      draftModel: 0,
      draftNumIter: 3,
      draftTopK: 8,
      draftTreeSize: 24,
      draftKvBytes: 2 ** 33,
      draftHead: 0,
      draftVocab: 0,
      draftVocabSize: 4096,
    }
    expect(defaults).toMatchObject({ draftModel: 0, draftNumIter: 2, draftTopK: 10, draftTreeSize: 12 })
    expect(defaults).toMatchObject({ draftHead: 0, draftVocab: 0, draftVocabSize: 0 })
    expect(readStruct(writeStruct(ep, engineParamsLayout, values), engineParamsLayout)).toEqual({ size: 96, ...values })

    const sp = newStruct('sampling_params')
    lib().minicpm_sampling_default_params(sp)
    const sd = readStruct(sp, samplingParamsLayout)
    expect(sd).toMatchObject({ size: 56, topP: 1, repetitionPenalty: 1, penaltyLastN: -1, speculative: 1 })
    const s = {
      temperature: 0.5,
      topP: 0.25,
      minP: 0.125,
      topK: 40,
      maxTokens: 17,
      topLogprobs: 20,
      logprobs: 1,
      ignoreEos: 1,
      seed: 2 ** 52 + 1,
    }
    expect(readStruct(writeStruct(sp, samplingParamsLayout, s), samplingParamsLayout)).toMatchObject(s)

    const cp = newStruct('context_params')
    lib().minicpm_context_default_params(cp)
    const cd = readStruct(cp, contextParamsLayout)
    console.log('context defaults', cd)
    expect(cd).toMatchObject({ size: structSizes.context_params, nSeqMax: 1, useReference: 0, exactKernels: 0 })
    const c = { nCtx: 512, nSeqMax: 2, nThreads: 1, kvDtype: 2, nChunk: 64, useReference: 0, exactKernels: 1 }
    expect(readStruct(writeStruct(cp, contextParamsLayout, c), contextParamsLayout)).toMatchObject(c)
  })
})
