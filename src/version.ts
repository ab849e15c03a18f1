/** The program's version (package.json) and what it runs on, for --version and GET /version. */
import pkg from '../package.json'

export const VERSION: string = pkg.version

export function versionInfo() {
  return { version: VERSION, bun: Bun.version, platform: `${process.platform}-${process.arch}` }
}

export function versionLine(): string {
  const v = versionInfo()
  return `minicpm-edge ${v.version} (bun ${v.bun}, ${v.platform})`
}
