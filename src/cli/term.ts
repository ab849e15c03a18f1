/**
 * stderr as the CLI shares it: one transient status line (a progress bar) and whole log lines. A log line
 * never lands inside a bar (the bar is cleared, the line printed, the bar redrawn) and a finished bar always
 * ends its line, so the next message starts on a line of its own.
 */
export interface Out {
  write(text: string): unknown
}

export class StatusLine {
  private bar: string | null = null

  constructor(private readonly out: Out = process.stderr) {}

  /** Draws or redraws the transient line. */
  show(text: string): void {
    this.bar = text
    this.out.write(`\r\x1b[K${text}`)
  }

  /** Ends the transient line, leaving `text` (or its last state) on it, followed by a newline. */
  end(text?: string): void {
    if (this.bar === null && text === undefined) return
    this.out.write(`\r\x1b[K${text ?? this.bar}\n`)
    this.bar = null
  }

  /** A whole line, printed above the bar if one is showing. */
  line(text: string): void {
    if (this.bar === null) this.out.write(`${text}\n`)
    else this.out.write(`\r\x1b[K${text}\n${this.bar}`)
  }
}

/** The process's stderr; every CLI message and log line goes through it. */
export const stderrLine = new StatusLine()
