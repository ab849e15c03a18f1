/**
 * `pull`: a model from the Hugging Face hub into the standard HF cache (src/hub/pull.ts); prints the model
 * directory on stdout, so that `MINICPM_MODEL=$(minicpm-edge pull org/name)` works.
 */
import { hubCacheDir } from '../hub/cache'
import { pull } from '../hub/pull'
import { parse, progressBar, UsageError, type Command } from './common'
import { stderrLine } from './term'

const options = {
  revision: { type: 'string' },
} as const

export const pullCommand: Command = {
  name: 'pull',
  summary: 'download a model from the Hugging Face hub (e.g. openbmb/MiniCPM4-0.5B)',
  usage: `Usage: minicpm-edge pull ORG/NAME [--revision REV]

Downloads what the engine reads (config, generation config, tokenizer files, safetensors and their index)
into the Hugging Face cache, resuming an interrupted download and checking every file's size and the sha256
the hub reports. A model already there (also one downloaded by Python tools) is not downloaded again.
Prints the model directory; 'serve', 'generate' and 'chat' also take the hub id as --model.

      --revision REV       branch, tag or commit (default main)

Environment: HF_TOKEN (gated or private repos), HF_ENDPOINT (a mirror; default https://huggingface.co),
HF_HOME / HF_HUB_CACHE (cache: ${hubCacheDir()}), HF_HUB_OFFLINE=1 (cache only).`,

  async run(argv) {
    const { values, positionals } = parse(argv, options, true)
    if (positionals.length !== 1) throw new UsageError('give one hub id, e.g. minicpm-edge pull openbmb/MiniCPM4-0.5B')
    const dir = await pull(positionals[0]!, {
      revision: values.revision,
      onProgress: progressBar(),
      log: (line) => stderrLine.line(line),
    })
    console.log(dir)
  },
}
