/**
 * Byte sizes as people type them: `2G`, `512M`, `1.5GiB`, `2GB`, `1073741824`. K/M/G/T and KiB/MiB/GiB/TiB
 * are powers of 1024 (as llama.cpp and ollama read them); KB/MB/GB/TB are powers of 1000, as written.
 */
const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
}

/** The byte count `text` names, or null if it is not a size. Fractions round down to whole bytes. */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$/i.exec(text)
  if (!m) return null
  const unit = UNITS[m[2]!.toLowerCase()]
  if (unit === undefined) return null
  const n = Math.floor(Number(m[1]) * unit)
  return Number.isSafeInteger(n) ? n : null
}

/** 1536 -> '1.5 KiB'; used in messages and progress lines. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = bytes
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`
}
