/**
 * Quantized weights end to end: GPTQ int4 checkpoints written by the project's generator (src/checkpoint/gptq.ts;
 * symmetric and asymmetric zero points, grouped and per channel, desc_act g_idx) give the logits of their
 * dequantized F32 twin; on-the-fly q8 / q4 of a generated checkpoint is reported as logit error and top-1
 * agreement against the unquantized model.
 */
import { afterAll, expect, setDefaultTimeout, test } from 'bun:test'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { NativeContext, NativeModel, type NativeModelOptions } from '../ffi'
import { readSafetensors, writeGptqTwins } from '../src/checkpoint/gptq'
import { writeSafetensors } from '../src/checkpoint/safetensors-writer'
import { marlinPerms, writeMarlinRepack } from '../src/checkpoint/marlin'
import { writeCheckpoint } from '../src/checkpoint/write-checkpoint'
import { saveQuantized } from '../src/runtime/save'

setDefaultTimeout(120_000)

const root = mkdtempSync(join(tmpdir(), 'minicpm-quant-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

// Hidden 128 and FFN 256 so that both the integer kernels (K a multiple of 64) and GPTQ groups apply.
const SHAPE = { hidden_size: 128, intermediate_size: 256, num_attention_heads: 8, num_key_value_heads: 2 }
const PROMPT = [1, 1734, 3812, 59, 4521, 912, 7, 88, 2048, 30000, 15, 73000, 64, 128, 5, 9]

function logits(dir: string, opts: NativeModelOptions = {}, useReference = false): { rows: Float32Array[]; info: ReturnType<NativeModel['info']> } {
  using m = NativeModel.load(dir, opts)
  using c = new NativeContext(m, { nThreads: 2, useReference, kvDtype: 'f32' })
  return { rows: c.eval(PROMPT, { output: 'all' }), info: m.info() }
}

function compare(a: Float32Array[], b: Float32Array[]): { maxAbs: number; rel: number; top1: number } {
  let maxAbs = 0
  let maxRef = 0
  let agree = 0
  for (let r = 0; r < a.length; r++) {
    let ia = 0
    let ib = 0
    for (let i = 0; i < a[r]!.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[r]![i]! - b[r]![i]!))
      maxRef = Math.max(maxRef, Math.abs(a[r]![i]!))
      if (a[r]![i]! > a[r]![ia]!) ia = i
      if (b[r]![i]! > b[r]![ib]!) ib = i
    }
    if (ia === ib) agree++
  }
  return { maxAbs, rel: maxAbs / maxRef, top1: agree / a.length }
}

for (const [name, o] of [
  ['sym group 64', { sym: true, group: 64 }],
  ['asym group 64', { sym: false, group: 64 }],
  ['sym per-channel', { sym: true, group: -1 }],
  ['asym group 32 desc_act', { sym: false, group: 32, descAct: true }],
] as const) {
  test(`GPTQ ${name}: same logits as the dequantized F32 twin`, () => {
    const { gptq, twin } = writeGptqTwins(join(root, name.replace(/ /g, '-')), { overrides: SHAPE, seed: 3, ...o })
    const t = logits(twin, {}, true)
    const refQ = logits(gptq, {}, true)
    const fast = logits(gptq)
    const exact = compare(t.rows, refQ.rows)
    const ints = compare(t.rows, fast.rows)
    console.log(
      `GPTQ ${name}: ${fast.info.weightDtype}, ${(fast.info.weightBytes / 1e6).toFixed(2)} MB ` +
        `(twin ${(t.info.weightBytes / 1e6).toFixed(2)} MB); reference ops vs twin: max abs ${exact.maxAbs.toExponential(2)} ` +
        `rel ${exact.rel.toExponential(2)}; fast kernels (int8 activations) vs twin: rel ${ints.rel.toExponential(2)} top-1 ${(ints.top1 * 100).toFixed(0)}%`,
    )
    expect(fast.info.weightDtype).toBe('q4')
    expect(exact.rel).toBeLessThan(1e-4)
    expect(ints.rel).toBeLessThan(5e-2)
    expect(ints.top1).toBeGreaterThanOrEqual(0.8)
  })
}

test('on-the-fly q8 / q4 against the unquantized checkpoint: logit error and top-1 agreement', () => {
  const dir = join(root, 'otf')
  writeCheckpoint(dir, { overrides: SHAPE, seed: 5, dtype: 'bf16' })
  const base = logits(dir)
  for (const [q, head, maxRel, minTop1] of [
    ['q8', true, 3e-2, 0.9],
    ['q4', false, 0.25, 0.5],
    ['q4', true, 0.35, 0.4],
  ] as const) {
    const r = logits(dir, { quantize: q, quantizeHead: head })
    const d = compare(base.rows, r.rows)
    console.log(
      `--quantize ${q}${head ? '' : ' (head kept bf16)'}: ${r.info.weightDtype}, ${(r.info.weightBytes / 1e6).toFixed(2)} MB vs ` +
        `${(base.info.weightBytes / 1e6).toFixed(2)} MB bf16, ${((r.info.weightBytes * 8) / r.info.nParams).toFixed(2)} bits/weight; ` +
        `logits max abs ${d.maxAbs.toExponential(2)} rel ${d.rel.toExponential(2)}, top-1 agreement ${(d.top1 * 100).toFixed(0)}% of ${PROMPT.length}`,
    )
    expect(r.info.weightDtype).toBe(q)
    expect(r.info.weightBytes).toBeLessThan(base.info.weightBytes)
    expect(d.rel).toBeLessThan(maxRel)
    expect(d.top1).toBeGreaterThanOrEqual(minTop1)
  }
  expect(() => NativeModel.load(dir, { quantize: 'q8', quantGroupSize: 48 })).toThrow(/quant_group_size/)
})

function sameBits(a: Float32Array[], b: Float32Array[]): number {
  let diff = 0
  for (let r = 0; r < a.length; r++) for (let i = 0; i < a[r]!.length; i++) if (!Object.is(a[r]![i], b[r]![i])) diff++
  return diff
}

for (const [q, tied, head] of [
  ['q4', true, true],
  ['q4', false, true],
  ['q8', true, true],
  ['q8', false, false],
] as const) {
  test(`quantize ${q} (${tied ? 'tied' : 'untied'}, head ${head ? 'quantized' : 'kept'}), save, load: identical logits, no quantization at load`, () => {
    const dir = join(root, `save-src-${q}-${tied}-${head}`)
    const out = join(root, `save-out-${q}-${tied}-${head}`)
    writeCheckpoint(dir, { overrides: SHAPE, seed: 7, dtype: 'bf16', tied })
    const r = saveQuantized(dir, out, { quantize: q, quantGroupSize: 64, quantizeHead: head })
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { quantization_config: Record<string, unknown> }
    const time = (f: () => void) => {
      const t0 = performance.now()
      f()
      return performance.now() - t0
    }
    let otfInfo: ReturnType<NativeModel['info']> | undefined
    let savedInfo: ReturnType<NativeModel['info']> | undefined
    const otfMs = time(() => void (otfInfo = NativeModel.load(dir, { quantize: q, quantGroupSize: 64, quantizeHead: head }).info()))
    const savedMs = time(() => void (savedInfo = NativeModel.load(out).info()))
    const otf = logits(dir, { quantize: q, quantGroupSize: 64, quantizeHead: head })
    const saved = logits(out)
    const otfRef = logits(dir, { quantize: q, quantGroupSize: 64, quantizeHead: head }, true)
    const savedRef = logits(out, {}, true)
    const diff = sameBits(otf.rows, saved.rows)
    const diffRef = sameBits(otfRef.rows, savedRef.rows)
    console.log(
      `save ${q} ${tied ? 'tied' : 'untied'} head ${head ? q : 'bf16'}: ${JSON.stringify(cfg.quantization_config)}; ` +
        `${(r.weightBytes / 1e6).toFixed(2)} MB ${r.bitsPerWeight.toFixed(2)} bits/weight, copied [${r.copied.join(', ')}]; ` +
        `load on the fly ${otfMs.toFixed(1)} ms vs saved ${savedMs.toFixed(1)} ms; logits differing bits: fast ${diff}, reference ${diffRef} ` +
        `of ${otf.rows.length * otf.rows[0]!.length}`,
    )
    expect(cfg.quantization_config.quant_method).toBe(q === 'q4' ? 'gptq' : 'minicpm_q8')
    expect(r.copied).toContain('tokenizer_config.json')
    expect(savedInfo!.weightDtype).toBe(q)
    expect(savedInfo!.weightBytes).toBe(otfInfo!.weightBytes)
    expect(savedInfo!.nParams).toBe(otfInfo!.nParams)
    expect(diff).toBe(0)
    expect(diffRef).toBe(0)
  })
}

for (const [name, group] of [
  ['group 128', 128],
  ['group 64', 64],
  ['per-channel', -1],
] as const) {
  test(`CPM.cu Marlin repack (${name}) loads to the GPTQ original's weights: identical logits`, () => {
    const base = join(root, `marlin-${group}`)
    const { gptq } = writeGptqTwins(base, { overrides: SHAPE, seed: 11, sym: true, group })
    const marlin = writeMarlinRepack(gptq, join(base, 'marlin'))
    const t0 = performance.now()
    const a = logits(gptq)
    const t1 = performance.now()
    const b = logits(marlin)
    const t2 = performance.now()
    const diff = sameBits(a.rows, b.rows)
    const diffRef = sameBits(logits(gptq, {}, true).rows, logits(marlin, {}, true).rows)
    console.log(
      `Marlin ${name}: ${readdirSync(marlin).filter((f) => f.endsWith('.safetensors')).join(', ')}, ${b.info.weightDtype} ` +
        `${(b.info.weightBytes / 1e6).toFixed(2)} MB (GPTQ ${(a.info.weightBytes / 1e6).toFixed(2)} MB); load+eval GPTQ ` +
        `${(t1 - t0).toFixed(0)} ms, Marlin ${(t2 - t1).toFixed(0)} ms; logits differing bits: fast ${diff}, reference ${diffRef}`,
    )
    expect(b.info.weightDtype).toBe('q4')
    expect(b.info.nParams).toBe(a.info.nParams)
    expect(diff).toBe(0)
    expect(diffRef).toBe(0)
  })
}

test('Marlin permutations: bijections, first fragment as worked out by hand from the mma m16n8k16 layout', () => {
  const { perm, scalePerm, scalePermSingle } = marlinPerms()
  console.log(`Marlin perm[0..16) = ${perm.slice(0, 16).join(' ')}; scale perm[0..16) = ${scalePerm.slice(0, 16).join(' ')}; single = ${scalePermSingle.join(' ')}`)
  expect([...perm].sort((a, b) => a - b)).toEqual([...Array(1024).keys()])
  expect([...scalePerm].sort((a, b) => a - b)).toEqual([...Array(64).keys()])
  expect([...scalePermSingle].sort((a, b) => a - b)).toEqual([...Array(32).keys()])
  // thread 0: rows 0, 1, 8, 9 of column 0 then column 8, nibble-interleaved (0 2 4 6 1 3 5 7)
  expect(perm.slice(0, 8)).toEqual([0, 128, 8, 136, 16, 144, 24, 152])
  expect(scalePerm.slice(0, 9)).toEqual([0, 8, 16, 24, 32, 40, 48, 56, 1])
  expect(scalePermSingle.slice(0, 8)).toEqual([0, 1, 8, 9, 16, 17, 24, 25])
})

test('q4 with zero points of 0 saves as gptq_v2; a GPTQ desc_act checkpoint re-saves with its g_idx; both load to identical logits', () => {
  // all-positive q_proj of layer 0: every group's range starts at 0, so its zero point is 0 (v1 would store -1)
  const dir = join(root, 'zp0')
  writeCheckpoint(dir, { overrides: SHAPE, seed: 9, dtype: 'f32' })
  const file = join(dir, 'model.safetensors')
  const ts = readSafetensors(file)
  const t = ts.find((x) => x.spec.name === 'model.layers.0.self_attn.q_proj.weight')!
  const w = new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4)
  for (let i = 0; i < w.length; i++) w[i] = Math.abs(w[i]!)
  writeSafetensors(file, ts.map((x) => x.spec), (spec, out) => out(ts.find((x) => x.spec.name === spec.name)!.data))
  const out = join(root, 'zp0-q4')
  saveQuantized(dir, out, { quantize: 'q4', quantGroupSize: 64 })
  const qc = (JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { quantization_config: { checkpoint_format: string } }).quantization_config
  const d1 = sameBits(logits(dir, { quantize: 'q4', quantGroupSize: 64 }).rows, logits(out).rows)

  const { gptq } = writeGptqTwins(join(root, 'resave'), { overrides: SHAPE, seed: 4, sym: false, group: 32, descAct: true })
  const again = join(root, 'resave-out')
  const r = saveQuantized(gptq, again)
  const qc2 = (JSON.parse(readFileSync(join(again, 'config.json'), 'utf8')) as { quantization_config: { desc_act: boolean } }).quantization_config
  const d2 = sameBits(logits(gptq).rows, logits(again).rows)
  console.log(`zero point 0: ${JSON.stringify(qc)}, differing logits ${d1}; GPTQ desc_act re-saved (${r.weightDtype}, ${r.bitsPerWeight.toFixed(2)} bits/weight): ${JSON.stringify(qc2)}, differing logits ${d2}`)
  expect(qc.checkpoint_format).toBe('gptq_v2')
  expect(qc2.desc_act).toBe(true)
  expect(d1).toBe(0)
  expect(d2).toBe(0)
  expect(() => saveQuantized(dir, join(root, 'plain-out'))).toThrow(/not quantized/)
})

test('load time at a larger shape: on the fly vs saved (q8 is mapped as is; q4 only unpacks GPTQ nibbles)', () => {
  const dir = join(root, 'big')
  writeCheckpoint(dir, { overrides: { hidden_size: 512, intermediate_size: 1536, num_hidden_layers: 2, num_attention_heads: 8, num_key_value_heads: 2 }, seed: 2, dtype: 'bf16' })
  const best = (f: () => void) => {
    let ms = Infinity
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now()
      f()
      ms = Math.min(ms, performance.now() - t0)
    }
    return ms
  }
  const lines: string[] = []
  for (const q of ['q8', 'q4'] as const) {
    const out = join(root, `big-${q}`)
    saveQuantized(dir, out, { quantize: q })
    const otf = best(() => NativeModel.load(dir, { quantize: q })[Symbol.dispose]())
    const saved = best(() => NativeModel.load(out)[Symbol.dispose]())
    lines.push(`${q}: on the fly ${otf.toFixed(1)} ms, saved ${saved.toFixed(1)} ms (${(otf / saved).toFixed(1)}x)`)
    if (q === 'q8') expect(saved).toBeLessThan(otf)
  }
  const plain = best(() => NativeModel.load(dir)[Symbol.dispose]())
  console.log(`load, best of 3 (hidden 512, 2 layers, vocab 73448): bf16 as stored ${plain.toFixed(1)} ms; ${lines.join('; ')}`)
})
