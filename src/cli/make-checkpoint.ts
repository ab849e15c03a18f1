/**
 * `make-checkpoint`: writes a random-weight MiniCPM4 checkpoint in the hub layout (for tests and benchmarks).
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { PRESET_NAMES, type PresetName } from '../checkpoint/presets'
import { writeCheckpoint, type WeightDtype } from '../checkpoint/write-checkpoint'
import { num, parse, progressBar, UsageError, type Command } from './common'

const options = {
  preset: { type: 'string' },
  out: { type: 'string', short: 'o' },
  dtype: { type: 'string' },
  shards: { type: 'string' },
  seed: { type: 'string' },
  untied: { type: 'boolean' },
  'quiet-if-exists': { type: 'boolean' },
} as const

const DTYPES: WeightDtype[] = ['bf16', 'f16', 'f32']

export const makeCheckpoint: Command = {
  name: 'make-checkpoint',
  summary: 'write a random-weight MiniCPM4 checkpoint (real tokenizer, hub layout)',
  usage: `Usage: minicpm-edge make-checkpoint --out DIR [flags]

Writes config.json, generation_config.json, the real MiniCPM4 tokenizer files and deterministic random weights.
The weights are noise: the checkpoint exists to test and benchmark the runtime.

  -o, --out DIR            output directory (required)
      --preset NAME        ${PRESET_NAMES.join(' | ')} (default tiny); 0.5b and 8b are the published shapes
      --dtype D            ${DTYPES.join(' | ')} (default bf16)
      --shards N           number of safetensors files (default 1)
      --seed N             weight seed (default 0)
      --untied             separate lm_head instead of the tied embedding
      --quiet-if-exists    do nothing (exit 0) when DIR already holds a complete checkpoint`,

  async run(argv) {
    const { values } = parse(argv, options)
    const out = values.out
    if (!out) throw new UsageError('--out DIR is required')
    const preset = (values.preset ?? 'tiny') as PresetName
    if (!PRESET_NAMES.includes(preset)) throw new UsageError(`--preset must be one of ${PRESET_NAMES.join(', ')}`)
    const dtype = (values.dtype ?? 'bf16') as WeightDtype
    if (!DTYPES.includes(dtype)) throw new UsageError(`--dtype must be one of ${DTYPES.join(', ')}`)
    // config.json is written last, so its presence means a complete checkpoint.
    if (values['quiet-if-exists'] && existsSync(join(out, 'config.json'))) return 0
    const bar = progressBar()
    const t0 = performance.now()
    const result = writeCheckpoint(out, {
      preset,
      dtype,
      shards: num(values, 'shards', { int: true, min: 1 }),
      seed: num(values, 'seed', { int: true, min: 0 }),
      tied: values.untied ? false : undefined,
      onProgress: (done, total) => bar(`writing ${preset}`, done, total),
    })
    const mib = (result.tensorBytes / 2 ** 20).toFixed(1)
    process.stderr.write(
      `wrote ${result.dir}: ${(result.nParams / 1e6).toFixed(2)} M random parameters, ${mib} MiB in ` +
        `${result.files.length} file(s), ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
    )
    return 0
  },
}
