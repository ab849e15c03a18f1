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
