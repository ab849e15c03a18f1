/**
 * The weight files of a model directory, in the order the engine picks a format (csrc/model/weights.cpp):
 * a safetensors index, model.safetensors, CPM.cu's model_gptq.safetensors, a pytorch_model.bin index, then
 * pytorch_model.bin. Returns the files of the first format present (an index: every shard it names, whether
 * on disk or not), or [] when there is none or its index is unreadable.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

const INDEXES = ['model.safetensors.index.json', 'pytorch_model.bin.index.json']

export function weightFiles(dir: string): string[] {
  for (const [index, single] of [
    [INDEXES[0]!, ['model.safetensors', 'model_gptq.safetensors']],
    [INDEXES[1]!, ['pytorch_model.bin']],
  ] as const) {
    const path = join(dir, index)
    if (existsSync(path)) {
      try {
        const map = (JSON.parse(readFileSync(path, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {}
        return [...new Set(Object.values(map))].sort()
      } catch {
        return []
      }
    }
    for (const f of single) if (existsSync(join(dir, f))) return [f]
  }
  return []
}

/** A weight file name the engine reads (safetensors, or PyTorch's torch.save format, sharded or not). */
export function isWeightFile(name: string): 'safetensors' | 'bin' | null {
  if (name.endsWith('.safetensors') || name === INDEXES[0]) return 'safetensors'
  if (/^pytorch_model(-\d+-of-\d+)?\.bin$/.test(name) || name === INDEXES[1]) return 'bin'
  return null
}
