/**
 * `bench`: runtime-side numbers (the engine's own kernels are measured by build/bench-engine):
 * tokenizer throughput, load-to-first-token on a 0.5B-shaped checkpoint, and the JS cost per generated token
 * as a share of the engine's step time.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { nativeLibrary } from '../../ffi/index'
import { writeCheckpoint } from '../checkpoint/write-checkpoint'
import { cacheRoot } from '../runtime/default-model'
import { generateProfile } from '../runtime/generate'
import { KV_DTYPES, loadModel } from '../runtime/load'
import { benchTokenizer } from '../tokenizer/index'
import { draftVocabOf, kvDtypeOf, num, parse, progressBar, quantizeOf, type Command } from './common'

const options = {
  model: { type: 'string', short: 'm' },
  tokens: { type: 'string', short: 'n' },
  threads: { type: 'string', short: 't' },
  'kv-dtype': { type: 'string' },
  quantize: { type: 'string' },
  'quant-group': { type: 'string' },
  draft: { type: 'string' },
  'draft-vocab': { type: 'string' },
} as const

export const bench: Command = {
  name: 'bench',
  summary: 'tokenizer speed, load-to-first-token, JS cost per token',
  usage: `Usage: minicpm-edge bench [--model DIR] [--tokens N] [--threads N] [--kv-dtype T]

  -m, --model DIR          a MiniCPM4-0.5B-shaped checkpoint (default: generated once, random weights, in
                           $MINICPM_CACHE/bench-0.5b)
  -n, --tokens N           tokens to generate for the per-token figures (default 32)
  -t, --threads N          engine threads (default: all cores)
      --kv-dtype T         KV cache element type: ${KV_DTYPES.join(', ')} (default bf16)
      --quantize q8|q4     quantize the weights at load; --quant-group N: features per scale (default 128)
      --draft DIR          speculative decoding (an EAGLE head or a draft model, as for serve); --draft-vocab
                           FILE[:N]: FR-Spec vocabulary of the draft. The decode line then shows the acceptance`,

  async run(argv) {
    const { values } = parse(argv, options)
    const nTokens = num(values, 'tokens', { int: true, min: 2 }) ?? 32
    const nThreads = num(values, 'threads', { int: true, min: 0 })
    const kvDtype = kvDtypeOf(values)
    const quant = quantizeOf(values)
    const dir = values.model ?? join(cacheRoot(), 'bench-0.5b')
    if (!values.model && !existsSync(join(dir, 'config.json'))) {
      const bar = progressBar()
      process.stderr.write(`generating a 0.5B-shaped random checkpoint in ${dir} (once)\n`)
      writeCheckpoint(dir, { preset: '0.5b', onProgress: (d, t) => bar('writing 0.5b', d, t) })
    }
    console.log(`library      ${nativeLibrary.path} (cpu: ${nativeLibrary.systemInfo() || 'baseline'})`)

    // Load to first token: everything a user waits for, from loadModel() to the first generated token.
    const t0 = performance.now()
    const phases: string[] = []
    let tPhase = t0
    const model = await loadModel(dir, {
      nThreads,
      kvDtype,
      ...quant,
      draft: values.draft,
      ...draftVocabOf(values),
      onProgress: (phase, done, total) => {
        if (done < total) return
        phases.push(`${phase} ${ms(performance.now() - tPhase)}`)
        tPhase = performance.now()
      },
    })
    const tLoaded = performance.now()
    try {
      let tFirst = 0
      for await (const ev of model.generate({
        messages: [{ role: 'user', content: 'Hello!' }],
        maxTokens: 1,
        temperature: 0,
      })) {
        if (ev.type === 'delta' && tFirst === 0) tFirst = performance.now()
      }
      const i = model.info
      console.log(
        `load         ${i.id}: ${(i.nParams / 1e6).toFixed(0)} M params ${i.weightDtype} ` +
          `(${(i.weightBytes / 1e6).toFixed(0)} MB, ${(i.bitsPerWeight ?? 0).toFixed(2)} bits/weight), KV ${i.kvDtype}, ` +
          `loadModel ${ms(tLoaded - t0)} (${phases.join(', ')}), ` +
          `first token ${ms(tFirst - t0)} after loadModel() began (weights in the page cache when recently written)`,
      )

      const text = mixedText()
      const tok = benchTokenizer(model.tokenizer, text)
      console.log(
        `tokenizer    encode ${(tok.encodeTokensPerS / 1e6).toFixed(2)} M tokens/s, decode ` +
          `${(tok.decodeTokensPerS / 1e6).toFixed(2)} M tokens/s (${tok.tokens} tokens, ${text.length} chars of mixed text)`,
      )

      const prompt = model.tokenize('The quick brown fox jumps over the lazy dog.')
      // Warm-up: the first tokens run through cold (not yet JIT-compiled) JS.
      for await (const _ of model.generate({ prompt, maxTokens: 4, ignoreEos: true, temperature: 0 }));
      Object.assign(generateProfile, { enabled: true, cpuUs: 0, tokens: 0 })
      let finish: { completionTokens: number; perTokenMs: number; meanAcceptLength?: number } | null = null
      for await (const ev of model.generate({ prompt, maxTokens: nTokens, ignoreEos: true, temperature: 0 })) {
        if (ev.type === 'finish')
          finish = {
            completionTokens: ev.usage.completionTokens,
            perTokenMs: ev.timings.perTokenMs,
            meanAcceptLength: ev.timings.meanAcceptLength,
          }
      }
      generateProfile.enabled = false
      const jsUs = generateProfile.cpuUs / Math.max(1, generateProfile.tokens)
      const stepUs = (finish?.perTokenMs ?? 0) * 1000
      console.log(
        `decode       ${finish?.completionTokens ?? 0} tokens: engine ${(stepUs / 1000).toFixed(2)} ms/token, ` +
          `JS ${jsUs.toFixed(1)} us CPU/token = ${stepUs > 0 ? ((100 * jsUs) / stepUs).toFixed(3) : '?'}% of the engine step` +
          (finish?.meanAcceptLength !== undefined ? `, mean accept length ${finish.meanAcceptLength.toFixed(2)}` : ''),
      )
    } finally {
      model.dispose()
    }
  },
}

function ms(x: number): string {
  return `${x.toFixed(0)} ms`
}

/** About 60 KB of English, Chinese, code, numbers, emoji and whitespace runs, deterministic. */
function mixedText(): string {
  const parts = [
    'MiniCPM4 runs on the edge: a 0.5B model answers in milliseconds, an 8B one in a blink. ',
    '面壁智能发布的端侧大模型，在长文本场景下采用稀疏注意力，推理速度显著提升。',
    'function add(a, b) {\n\treturn a + b // 42\n}\n',
    'Prices: 3.14159, 2,718.28, 1e-5, 0xDEADBEEF; dates 2025-06-06. ',
    'Emoji 🚀🔥 and accents: café, naïve, Zürich. ',
    '    indented    with   runs of spaces\n\n',
  ]
  let out = ''
  for (let i = 0; out.length < 60_000; i++) out += parts[(i * 7) % parts.length]
  return out
}
