// Bun resolves `import p from './x.model' with { type: 'file' }` to the file's path (embedded by `bun build
// --compile`); TypeScript needs to be told the extension's default export is that path.
declare module '*.model' {
  const path: string
  export default path
}
