/**
 * @module
 * POST /tokenize ({content | prompt, add_special, with_pieces}) and POST /detokenize ({tokens}),
 * as llama.cpp names them; token ids are checked against the vocabulary.
 */

import { Hono } from 'hono'
import { badRequest } from '../errors.ts'
import { checkTokenIds } from '../sampling.ts'
import { DETOKENIZE_MAX_IDS, detokenizeRequest, parseBody, tokenizeRequest } from '../schemas.ts'
import type { AppState } from '../state.ts'

/** Registers /tokenize and /detokenize on a sub-app. */
export function tokenizeRoutes(state: AppState): Hono {
  const app = new Hono()
  app.post('/tokenize', async (c) => {
    const body = await parseBody(c.req.raw, tokenizeRequest)
    const model = state.get()
    state.checkModel(body.model)
    const text = body.content ?? body.prompt
    if (text == null) throw badRequest('content (or prompt) is required', 'content')
    // Large texts are tokenized in the text worker: /health and running streams keep their latency.
    // The token list arrives as JSON text: a million ids are not stringified on the main thread either.
    const r = await model.tokenizeJson(text, {
      addSpecialTokens: body.add_special ?? true,
      withPieces: body.with_pieces === true,
    })
    return c.body(`{"tokens":${r.json},"count":${r.count},"max_model_len":${model.info.nCtx}}`, 200, {
      'content-type': 'application/json',
    })
  })
  app.post('/detokenize', async (c) => {
    const body = await parseBody(c.req.raw, detokenizeRequest, (raw) => {
      const n = Array.isArray(raw.tokens) ? raw.tokens.length : 0
      if (n > DETOKENIZE_MAX_IDS) {
        throw badRequest(`tokens: ${n} ids exceed the limit of ${DETOKENIZE_MAX_IDS}`, 'tokens', 'too_many_tokens')
      }
    })
    const model = state.get()
    state.checkModel(body.model)
    checkTokenIds(body.tokens, model.info, 'tokens')
    return c.json({ content: await model.detokenizeAsync(body.tokens, { skipSpecialTokens: false }) })
  })
  return app
}
