/**
 * The command-line dispatcher: picks the command, prints usage and --help, and turns every failure into one
 * line on stderr and a non-zero exit code, never a stack trace. The command list is the program's (../../cli.ts).
 */
import { versionLine } from '../version'
import { UsageError, type Command } from './common'

function usage(commands: Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length))
  return [
    'Usage: minicpm-edge <command> [flags]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    "Run 'minicpm-edge <command> --help' for a command's flags; --version prints the version.",
  ].join('\n')
}

export async function dispatch(commands: Command[], argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage(commands))
    return name === undefined ? 1 : 0
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    console.log(versionLine())
    return 0
  }
  const command = commands.find((c) => c.name === name)
  if (!command) {
    process.stderr.write(`minicpm-edge: unknown command '${name}'\n${usage(commands)}\n`)
    return 2
  }
  const flags = rest.slice(0, rest.includes('--') ? rest.indexOf('--') : rest.length)
  if (flags.includes('--help') || flags.includes('-h')) {
    console.log(command.usage)
    return 0
  }
  try {
    return (await command.run(rest)) ?? 0
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e)
    process.stderr.write(`minicpm-edge ${name}: ${message.split('\n')[0]}\n`)
    if (process.env.MINICPM_DEBUG === '1' && e instanceof Error) process.stderr.write(`${e.stack}\n`)
    return e instanceof UsageError ? 2 : 1
  }
}
