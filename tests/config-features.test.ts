/**
 * Configuration is never ignored silently: a sparse_config turns InfLLM v2 sparse attention on (dense below
 * dense_len, so short prompts give the dense logits), the load option `sparse` overrides it either way, invalid
 * sparse fields and quantization configs the engine cannot run (not GPTQ 4-bit) are refused with the field
 * named. The backend field picks where the model runs.
 */
import { afterAll, expect, setDefaultTimeout, test } from 'bun:test'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { NativeContext, NativeError, NativeModel } from '../ffi'
import { freshCheckpoint, SMALL } from './helpers/checkpoints'

setDefaultTimeout(60_000)

const written: string[] = []
afterAll(() => {
  for (const d of written) rmSync(d, { recursive: true, force: true })
})

/** A small checkpoint whose config.json gets `extra` merged in. */
function withConfig(extra: Record<string, unknown>): string {
  const dir = freshCheckpoint({ ...SMALL, overrides: { ...SMALL.overrides } })
  written.push(dir)
  const path = join(dir, 'config.json')
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), ...extra }))
  return dir
}

function loadError(dir: string): NativeError {
  try {
    NativeModel.load(dir).dispose()
  } catch (e) {
    if (e instanceof NativeError) return e
    throw e
  }
  throw new Error(`${dir} loaded`)
}

const SPARSE = {
  kernel_size: 32,
  kernel_stride: 16,
  init_blocks: 1,
  block_size: 64,
  window_size: 2048,
  topk: 64,
  use_nope: false,
  dense_len: 8192,
}

test('sparse_config runs InfLLM v2 (hf); below dense_len the logits equal the dense model; the load option overrides it', () => {
  const dense = withConfig({})
  const sparse = withConfig({ sparse_config: SPARSE })
  using m = NativeModel.load(sparse)
  expect(m.warnings()).toEqual([])
  expect(m.info().sparseConfig).toBe(true)
  expect(m.info().sparseAttention).toBe('hf')
  using d = NativeModel.load(dense)
  expect(d.warnings()).toEqual([])
  expect(d.info().sparseConfig).toBe(false)
  expect(d.info().sparseAttention).toBe('off')
  // KV bytes per token include the compressed keys (C1 4 + C2 1 rows of head_dim f32 per 64 tokens and KV head).
  const i = d.info()
  const extra = m.info().kvBytesPerToken - i.kvBytesPerToken
  console.log(`KV bytes/token: dense ${i.kvBytesPerToken}, sparse ${m.info().kvBytesPerToken}`)
  expect(extra).toBe((i.nLayer * i.nHeadKv * 5 * i.nHeadDim * 4) / 64)
  using cs = new NativeContext(m, { nThreads: 2, nCtx: 64 })
  using cd = new NativeContext(d, { nThreads: 2, nCtx: 64 })
  const a = cs.eval([5, 6, 7, 8])[0]!
  const b = cd.eval([5, 6, 7, 8])[0]!
  let maxDiff = 0
  for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!))
  console.log(`sparse_config model vs dense model below dense_len: max |logit diff| ${maxDiff}`)
  expect(maxDiff).toBe(0)
  using off = NativeModel.load(sparse, { sparse: 'off' })
  expect(off.info().sparseAttention).toBe('off')
  using v2 = NativeModel.load(dense, { sparse: 'v2' })
  expect(v2.info().sparseAttention).toBe('v2')
  using hf = NativeModel.load(dense, { sparse: 'hf' })
  expect(hf.info().sparseAttention).toBe('hf')
})

test('invalid sparse_config fields are refused, naming the field', () => {
  const cases: Array<[Record<string, unknown>, string, string]> = [
    [{ ...SPARSE, block_size: 32 }, 'unsupported', 'sparse_config.block_size'],
    [{ ...SPARSE, topk: 'many' }, 'bad_model', 'sparse_config.topk'],
    [{ ...SPARSE, kernel_stride: 64 }, 'bad_model', 'sparse_config.kernel_stride'],
    [{ ...SPARSE, use_nope: 1 }, 'bad_model', 'sparse_config.use_nope'],
    [{ ...SPARSE, use_nope: true }, 'unsupported', 'sparse_config.use_nope'],
    [{ ...SPARSE, kernel_stride: 24, kernel_size: 48 }, 'unsupported', 'sparse_config.kernel_stride'],
  ]
  for (const [sc, status, field] of cases) {
    const e = loadError(withConfig({ sparse_config: sc }))
    console.log(`${field}: ${e.statusName}: ${e.message}`)
    expect(e.statusName).toBe(status)
    expect(e.message).toContain(field)
  }
})

test('quantization_config: GPTQ 4-bit is read (plain .weight tensors still bind as plain); other methods are refused', () => {
  const gptq = { quant_method: 'gptq', bits: 4, group_size: 128, sym: true, desc_act: false }
  {
    using m = NativeModel.load(withConfig({ quantization_config: gptq }))
    console.log(`gptq config over plain tensors: weights ${m.info().weightDtype}`)
    expect(m.info().quantizationConfig).toBe(true)
    expect(m.info().weightDtype).toBe('bf16')
  }
  const cases: [Record<string, unknown>, string, string][] = [
    [{ ...gptq, bits: 8 }, 'unsupported', 'quantization_config.bits'],
    [{ ...gptq, quant_method: 'awq' }, 'unsupported', 'quantization_config.quant_method'],
    [{ ...gptq, group_size: 0 }, 'bad_model', 'quantization_config.group_size'],
    [{ ...gptq, checkpoint_format: 'marlin' }, 'unsupported', 'quantization_config.checkpoint_format'],
  ]
  for (const [qc, status, field] of cases) {
    const e = loadError(withConfig({ quantization_config: qc }))
    console.log(`${field}: ${e.statusName}: ${e.message}`)
    expect(e.statusName).toBe(status)
    expect(e.message).toContain(field)
  }
})

test('backend: auto and cpu run on the CPU backend; cuda is refused in a build without it', () => {
  const dir = withConfig({})
  for (const backend of ['auto', 'cpu'] as const) {
    using m = NativeModel.load(dir, { backend })
    console.log(`backend ${backend}: ${m.info().backendName}`)
    expect(m.info().backendName).toBe('cpu')
  }
  let err: unknown
  try {
    NativeModel.load(dir, { backend: 'cuda' }).dispose()
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(NativeError)
  console.log(`backend cuda: ${(err as NativeError).message}`)
  expect((err as NativeError).statusName).toBe('unsupported')
})
