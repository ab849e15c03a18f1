/**
 * `info`: what a model directory holds (config summary, tensors, dtypes, bytes, tokenizer, random-weights
 * label) and whether the engine loads it. Exit code 1 when it does not load.
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { NativeEngine, NativeModel, nativeLibrary } from '../../ffi/index'
import { resolveModelDir } from '../runtime/load'
import { weightFiles } from '../hub/weight-files'
import { readModelDir } from '../runtime/model-dir'
import { modelHelp, num, parse, progressBar, type Command } from './common'
import { stderrLine } from './term'

const options = {
  model: { type: 'string', short: 'm' },
  json: { type: 'boolean' },
  bandwidth: { type: 'string' },
} as const

export const info: Command = {
  name: 'info',
  summary: 'describe a model directory and check that it loads',
  usage: `Usage: minicpm-edge info [--model DIR] [--json]

Prints the config summary, the weight files (safetensors: tensor count, dtypes, bytes; pytorch_model.bin: bytes), the tokenizer kind, whether the
weights are generated random ones, and whether the engine loads the model (exit code 1 when it does not).

      --json               print one JSON object instead of text
      --bandwidth GBS      memory bandwidth for the decode roofline (default 100 GB/s)

${modelHelp.split('\n').slice(0, 3).join('\n')}`,

  async run(argv) {
    const { values } = parse(argv, options)
    const bandwidthGBs = num(values, 'bandwidth', { min: 0.001 }) ?? 100
    const dir = await resolveModelDir(values.model, progressBar(), (line) => stderrLine.line(line))
    const facts = readModelDir(dir)
    const c = facts.config
    const files = weightFiles(facts.dir)
    const tensors = files.map((f) => ({ file: f, ...weightSummary(join(facts.dir, f)) }))
    const dtypes: Record<string, number> = {}
    for (const t of tensors) for (const [d, n] of Object.entries(t.dtypes)) dtypes[d] = (dtypes[d] ?? 0) + n
    const tokenizer = existsSync(join(facts.dir, 'tokenizer.json'))
      ? 'tokenizer.json'
      : existsSync(join(facts.dir, 'tokenizer.model'))
        ? 'tokenizer.model (SentencePiece, converted at load)'
        : 'none'
    let load: Load
    try {
      using model = NativeModel.load(facts.dir)
      const i = model.info()
      // The kernel family is chosen when an engine makes its backend (MINICPM_KERNELS forces one).
      using engine = new NativeEngine(model, { kvBytes: 1 << 20 })
      const backend = engine.stats().backendName
      load = {
        ok: true,
        nParams: i.nParams,
        weightBytes: i.weightBytes,
        weightDtype: i.weightDtype,
        bitsPerWeight: (i.weightBytes * 8) / Math.max(1, i.nParams),
        // batch-1 decode reads every weight byte once per token (a tied head: the whole embedding)
        decodeRoofline: { bandwidthGBs, tokPerS: (bandwidthGBs * 1e9) / Math.max(1, i.weightBytes) },
        library: nativeLibrary.path,
        backend,
        warnings: model.warnings(),
        sparseAttention: i.sparseAttention,
        kvBytesPerToken: i.kvBytesPerToken,
        device: { free: i.deviceMemoryFree, total: i.deviceMemoryTotal, arena: i.deviceArenaBytes, arenaFree: i.deviceArenaFree },
      }
    } catch (e) {
      load = { ok: false, error: (e as Error).message }
    }
    const report = {
      dir: facts.dir,
      id: facts.id,
      randomWeights: facts.randomWeights,
      architecture: (c.architectures as string[] | undefined)?.[0] ?? 'unknown',
      config: pick(c, [
        'hidden_size',
        'num_hidden_layers',
        'num_attention_heads',
        'num_key_value_heads',
        'intermediate_size',
        'vocab_size',
        'max_position_embeddings',
        'tie_word_embeddings',
        'torch_dtype',
      ]),
      files: tensors.map((t) => ({ file: t.file, tensors: t.count, bytes: t.bytes })),
      tensors: tensors.reduce((a, t) => a + t.count, 0),
      dtypes,
      bytes: tensors.reduce((a, t) => a + t.bytes, 0),
      tokenizer,
      generationDefaults: facts.generationDefaults,
      load,
    }
    if (values.json) console.log(JSON.stringify(report, null, 2))
    else printReport(report)
    return load.ok ? 0 : 1
  },
}

type Load =
  | {
      ok: true
      nParams: number
      weightBytes: number
      weightDtype: string
      bitsPerWeight: number
      decodeRoofline: { bandwidthGBs: number; tokPerS: number }
      library: string
      backend: string
      warnings: string[]
      sparseAttention: string
      kvBytesPerToken: number
      device: { free: number; total: number; arena: number; arenaFree: number }
    }
  | { ok: false; error: string }

function pick(obj: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => obj[k] !== undefined).map((k) => [k, obj[k]]))
}

/**
 * Reads only the JSON header of a safetensors file (8-byte little-endian length, then the header). A
 * torch.save file (pytorch_model.bin) lists its tensors only inside a pickle: its size is given, and the
 * engine's load line says what it holds.
 */
function weightSummary(path: string): { count: number; bytes: number; dtypes: Record<string, number> } {
  if (!existsSync(path)) return { count: 0, bytes: 0, dtypes: { missing: 1 } }
  if (path.endsWith('.bin')) return { count: 0, bytes: statSync(path).size, dtypes: { 'torch.save': 1 } }
  const fd = openSync(path, 'r')
  try {
    const len = Buffer.alloc(8)
    readSync(fd, len, 0, 8, 0)
    const n = Number(len.readBigUInt64LE(0))
    if (n <= 0 || n > 100 * 1024 * 1024 || n + 8 > statSync(path).size)
      return { count: 0, bytes: 0, dtypes: { unreadable: 1 } }
    const header = Buffer.alloc(n)
    readSync(fd, header, 0, n, 8)
    const entries = Object.entries(
      JSON.parse(header.toString('utf8')) as Record<string, { dtype?: string; data_offsets?: number[] }>,
    )
    const dtypes: Record<string, number> = {}
    let bytes = 0
    let count = 0
    for (const [name, t] of entries) {
      if (name === '__metadata__') continue
      count++
      dtypes[t.dtype ?? '?'] = (dtypes[t.dtype ?? '?'] ?? 0) + 1
      if (t.data_offsets?.length === 2) bytes += t.data_offsets[1]! - t.data_offsets[0]!
    }
    return { count, bytes, dtypes }
  } catch {
    return { count: 0, bytes: 0, dtypes: { unreadable: 1 } }
  } finally {
    closeSync(fd)
  }
}

function printReport(r: {
  dir: string
  id: string
  randomWeights: boolean
  architecture: string
  config: Record<string, unknown>
  files: Array<{ file: string; tensors: number; bytes: number }>
  tensors: number
  dtypes: Record<string, number>
  bytes: number
  tokenizer: string
  generationDefaults: object
  load: Load
}): void {
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`
  const pickled = r.files.some((f) => f.file.endsWith('.bin'))
  const lines = [
    `model        ${r.id}  (${r.dir})`,
    `weights      ${r.randomWeights ? 'RANDOM (generated test checkpoint; output is meaningless)' : 'trained (as published)'}`,
    `architecture ${r.architecture}`,
    `config       ${Object.entries(r.config)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
    `tensors      ${pickled ? 'pickled' : r.tensors} in ${r.files.length} file(s), ${mb(r.bytes)}; dtypes ${Object.entries(r.dtypes)
      .map(([d, n]) => `${d}:${n}`)
      .join(' ')}`,
    ...r.files.map((f) => `  ${f.file}: ${f.file.endsWith('.bin') ? 'torch.save' : `${f.tensors} tensors`}, ${mb(f.bytes)}`),
    `tokenizer    ${r.tokenizer}`,
    `generation   ${JSON.stringify(r.generationDefaults)}`,
    r.load.ok
      ? `loads        yes: ${(r.load.nParams / 1e6).toFixed(2)} M parameters, ${mb(r.load.weightBytes)} (${r.load.library})\n` +
        `weights      ${r.load.weightDtype}, ${r.load.bitsPerWeight.toFixed(2)} bits/weight; decode roofline ` +
        `${r.load.decodeRoofline.tokPerS.toFixed(1)} tok/s at ${r.load.decodeRoofline.bandwidthGBs} GB/s (weights read once per token)\n` +
        `kernels      ${r.load.backend}${process.env.MINICPM_KERNELS ? ` (MINICPM_KERNELS=${process.env.MINICPM_KERNELS})` : ''}`
      : `loads        NO: ${r.load.error}`,
    ...(r.load.ok
      ? [
          `attention    ${r.load.sparseAttention === 'off' ? 'dense' : `InfLLM v2 sparse (variant ${r.load.sparseAttention}) beyond sparse_config.dense_len, dense below`}; KV ${r.load.kvBytesPerToken} bytes/token (bf16${r.load.sparseAttention === 'off' ? '' : ', incl. compressed keys'})`,
        ]
      : []),
    ...(r.load.ok && r.load.device.arena > 0
      ? [
          `device       ${mb(r.load.device.free)} free of ${mb(r.load.device.total)} at load; arena ${mb(r.load.device.arena)} ` +
            `(--gpu-memory), ${mb(r.load.device.arenaFree)} left after the weights for KV and activations`,
        ]
      : []),
    ...(r.load.ok ? r.load.warnings.map((w) => `warning      ${w}`) : []),
  ]
  console.log(lines.join('\n'))
}
