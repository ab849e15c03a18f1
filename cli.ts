#!/usr/bin/env bun
/**
 * minicpm-edge command line: `bun cli.ts <command> [flags]` (also `bun src/cli/main.ts`, or the compiled
 * dist/minicpm-edge). The runtime's commands come from src/cli/; `serve` joins them to the HTTP layer in routes/,
 * which is why this entry sits above both.
 */
import { serve } from './routes/serve-command.ts'
import { bench } from './src/cli/bench.ts'
import { chat } from './src/cli/chat.ts'
import type { Command } from './src/cli/common.ts'
import { dispatch } from './src/cli/dispatch.ts'
import { generateCommand } from './src/cli/generate.ts'
import { healthCommand } from './src/cli/health.ts'
import { info } from './src/cli/info.ts'
import { makeCheckpoint } from './src/cli/make-checkpoint.ts'
import { pullCommand } from './src/cli/pull.ts'
import { quantizeCommand } from './src/cli/quantize.ts'

export const commands: Command[] = [serve, pullCommand, generateCommand, chat, bench, info, makeCheckpoint, quantizeCommand, healthCommand]

export function main(argv: string[]): Promise<number> {
  return dispatch(commands, argv)
}

if (import.meta.main) process.exit(await main(process.argv.slice(2)))
