/**
 * `quantize`: quantizes a checkpoint once and saves it (q4: GPTQ int4, q8: minicpm_q8), so that serving it later
 * costs no quantization at start-up.
 */
import { resolveModelDir } from '../runtime/load'
import { saveQuantized } from '../runtime/save'
import { parse, quantizeOf, UsageError, type Command } from './common'

const options = {
  model: { type: 'string', short: 'm' },
  out: { type: 'string', short: 'o' },
  quantize: { type: 'string' },
  'quant-group': { type: 'string' },
  'keep-head': { type: 'boolean' },
} as const

export const quantizeCommand: Command = {
  name: 'quantize',
  summary: 'quantize a checkpoint once and save it (q4 as GPTQ int4, q8 as minicpm_q8)',
  usage: `Usage: minicpm-edge quantize --model DIR|ID --quantize q8|q4 --out DIR [flags]

Loads the checkpoint with round-to-nearest quantization and writes a hub-layout directory (weights, config.json
with quantization_config, tokenizer files) that later loads with no quantization work.

  -m, --model DIR|ID       source checkpoint (BF16 / F16 / F32), or a hub id
  -o, --out DIR            output directory (required; created)
      --quantize q8|q4     q4: GPTQ int4 (AutoGPTQ layout); q8: minicpm_q8 (int8 + f16 scale per group)
      --quant-group N      input features per scale, a multiple of 32 (default 128)
      --keep-head          keep the LM head / tied embedding unquantized`,

  async run(argv) {
    const { values } = parse(argv, options)
    if (!values.out) throw new UsageError('--out DIR is required')
    const q = quantizeOf(values)
    if (!q.quantize) throw new UsageError('--quantize q8|q4 is required')
    const src = await resolveModelDir(values.model)
    const r = saveQuantized(src, values.out, { ...q, quantizeHead: values['keep-head'] ? false : undefined })
    process.stderr.write(
      `wrote ${r.dir}: ${r.weightDtype}, ${(r.weightBytes / 2 ** 20).toFixed(1)} MiB, ${r.bitsPerWeight.toFixed(2)} ` +
        `bits/weight; quantized in ${(r.quantizeMs / 1000).toFixed(2)} s, saved in ${(r.saveMs / 1000).toFixed(2)} s; ` +
        `copied ${r.copied.join(', ') || 'no other files'}\n`,
    )
    return 0
  },
}
