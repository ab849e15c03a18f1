/**
 * The program's version and what it runs on, for --version and GET /version. Kept equal to package.json's
 * version by tests/cli.test.ts (src/ imports nothing outside src/, ffi/ and assets/).
 */
export const VERSION = '0.1.0'

export function versionInfo() {
  return { version: VERSION, bun: Bun.version, platform: `${process.platform}-${process.arch}` }
}

export function versionLine(): string {
  const v = versionInfo()
  return `minicpm-edge ${v.version} (bun ${v.bun}, ${v.platform})`
}
