#!/usr/bin/env bun
/**
 * `bun src/cli/main.ts <command> [flags]` runs the program in ../../cli.ts. That entry lives outside src/
 * because `serve` needs the HTTP layer (routes/), which nothing under src/ imports; a dynamic import of the
 * top-level entry keeps this path working without making src/ depend on it.
 */
const { main } = await import('../../cli.ts')
process.exit(await main(process.argv.slice(2)))
