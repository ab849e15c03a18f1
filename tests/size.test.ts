/** Byte sizes with suffixes (src/util/size.ts), as --kv-bytes takes them. */
import { expect, test } from 'bun:test'
import { formatSize, parseSize } from '../src/util/size'

test('sizes: K/M/G/T and KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of 1000, plain numbers bytes', () => {
  const cases: [string, number | null][] = [
    ['1073741824', 2 ** 30],
    ['2G', 2 * 2 ** 30],
    ['2g', 2 * 2 ** 30],
    ['512M', 512 * 2 ** 20],
    ['1.5GiB', 1.5 * 2 ** 30],
    ['64 KiB', 64 * 1024],
    ['4GB', 4e9],
    ['100kb', 1e5],
    ['1T', 2 ** 40],
    ['10B', 10],
    ['', null],
    ['2X', null],
    ['-1G', null],
    ['G', null],
    ['1e9', null],
  ]
  for (const [text, want] of cases) expect([text, parseSize(text)]).toEqual([text, want])
  expect(formatSize(1536)).toBe('1.5 KiB')
  expect(formatSize(830 * 2 ** 20)).toBe('830 MiB')
  expect(formatSize(12)).toBe('12 B')
})

test('bench:http table rows line up under their headers', async () => {
  const { tableRow } = await import('../routes/bench/http.ts')
  const header = tableRow(['conc', 'engine tok/s', 'engine TTFT p50/p99 ms', 'http tok/s', 'http TTFT p50/p99 ms', 'http/engine', 'CPU us/token engine/http', '/health p50/p99 ms', 'probes'])
  const row = tableRow(['32', '783.4', '3.0/3.0', '105.7', '37.3/37.3', '0.135', '1321/6085', '18.82/18.82', '2'])
  console.log(`${header}\n${row}`)
  expect(row.length).toBe(header.length)
  // Each cell ends where its header ends.
  const ends = (line: string) => [...line.matchAll(/\S+(?=\s{2}|$)/g)].map((m) => m.index! + m[0].length)
  expect(ends(row)).toEqual(ends(header))
})
