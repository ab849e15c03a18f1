/**
 * @module
 * GET /: the chat page (./chat.html), one self-contained file (inline CSS and JS, no CDN, no build step)
 * inlined into the server and the compiled executable. It talks to /v1/models and /v1/chat/completions.
 */

import { Hono } from 'hono'
import chatHtml from './chat.html' with { type: 'text' }
import type { AppState } from '../state.ts'

// With `type: 'text'` Bun inlines the file as a string; bun-types declares *.html as an HTML bundle.
const page = chatHtml as unknown as string

/** Registers GET / on a sub-app. */
export function uiRoutes(_state: AppState): Hono {
  const app = new Hono()
  app.get('/', (c) =>
    c.html(page, 200, {
      'cache-control': 'no-cache',
      // Everything is inline and same-origin: nothing else may load or be loaded from elsewhere.
      'content-security-policy':
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    }),
  )
  return app
}
