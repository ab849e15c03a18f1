/**
 * Dependency direction: routes/ (the HTTP layer) builds on src/ (the runtime), never the reverse, so the
 * library can be imported without Hono and the server can change without touching the runtime.
 */
import { describe, expect, test } from 'bun:test'
import { readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'

const REPO = join(import.meta.dir, '..')

interface ImportRef {
  spec: string
  dynamic: boolean
}

/** Module specifiers of every import and re-export in `code`, type-only ones included; comments ignored. */
function importsOf(code: string): ImportRef[] {
  const bare = code.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '')
  const refs: ImportRef[] = []
  const scan = (re: RegExp, dynamic: boolean) => {
    for (const m of bare.matchAll(re)) if (m[2] !== undefined) refs.push({ spec: m[2], dynamic })
  }
  scan(/\b(?:import|export)\b[^'"`;]*?\bfrom\s*(['"])([^'"]+)\1/g, false)
  scan(/\bimport\s*(['"])([^'"]+)\1/g, false)
  scan(/\bimport\s*\(\s*(['"])([^'"]+)\1\s*\)/g, true)
  return refs
}

/** Repo-relative path an import points to, or null for packages and builtins. */
function target(file: string, spec: string): string | null {
  if (!spec.startsWith('.')) return null
  return relative(REPO, resolve(dirname(join(REPO, file)), spec))
}

const srcFiles = [...new Bun.Glob('src/**/*.ts').scanSync({ cwd: REPO })].sort()
const srcImports = srcFiles.flatMap((file) =>
  importsOf(readFileSync(join(REPO, file), 'utf8')).map((ref) => ({ file, ...ref, to: target(file, ref.spec) })),
)

describe('layering', () => {
  test('the scanner finds static, type-only, re-export, side-effect and dynamic imports, not comments', () => {
    const code = [
      "// import { a } from '../routes/in-a-comment.ts'",
      "/* import { b } from '../routes/in-a-block.ts' */",
      "import { c, type C } from '../routes/c.ts'",
      "import type {\n  D,\n  E,\n} from '../routes/d.ts'",
      "export { f } from './f.ts'",
      "import '../routes/side-effect.ts'",
      "const g = await import('../../g.ts')",
    ].join('\n')
    expect(importsOf(code)).toEqual([
      { spec: '../routes/c.ts', dynamic: false },
      { spec: '../routes/d.ts', dynamic: false },
      { spec: './f.ts', dynamic: false },
      { spec: '../routes/side-effect.ts', dynamic: false },
      { spec: '../../g.ts', dynamic: true },
    ])
  })

  test('no file under src/ imports from routes/', () => {
    expect(srcFiles.length).toBeGreaterThan(20)
    expect(srcImports.length).toBeGreaterThan(50)
    const bad = srcImports.filter((i) => i.to !== null && (i.to === 'routes' || i.to.startsWith('routes/')))
    expect(bad.map((i) => `${i.file}: ${i.spec}`)).toEqual([])
  })

  test('static imports under src/ stay in src/, ffi/ and assets/, so loading src/ never loads routes/', () => {
    // The one way out is dynamic: src/cli/main.ts loads the top-level cli.ts when run as a script.
    const allowed = ['src/', 'ffi/', 'assets/']
    const bad = srcImports.filter(
      ({ dynamic, to }) => !dynamic && to !== null && !allowed.some((p) => to.startsWith(p)),
    )
    expect(bad.map((i) => `${i.file}: ${i.spec}`)).toEqual([])
  })
})
