/**
 * Preloaded by `bun test` (bunfig.toml): keeps generated default models out of the user's home cache and
 * says once which native library the suites run against.
 */
import { tmpdir } from 'node:os'
import { join } from 'node:path'

process.env.MINICPM_CACHE ??= join(tmpdir(), 'minicpm-edge-test-cache')
const lib = process.env.MINICPM_LIB ?? join(import.meta.dir, '..', 'build', 'libminicpm.so')
process.stderr.write(`[setup] libminicpm: ${lib}; cache: ${process.env.MINICPM_CACHE}\n`)
