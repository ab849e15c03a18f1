/**
 * @module
 * POST /tokenize ({content | prompt, add_special, with_pieces}) and POST /detokenize ({tokens}),
 * as llama.cpp names them; token ids are checked against the vocabulary.
 */

import { Hono } from 'hono'
import { badRequest } from '../errors.ts'
import { checkTokenIds } from '../sampling.ts'
import { detokenizeRequest, parseBody, tokenizeRequest } from '../schemas.ts'
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
    const ids = model.tokenize(text, { addSpecialTokens: body.add_special ?? true })
    const tokens = body.with_pieces ? ids.map((id) => ({ id, piece: model.tokenText(id) })) : ids
    return c.json({ tokens, count: ids.length, max_model_len: model.info.nCtx })
  })
  app.post('/detokenize', async (c) => {
    const body = await parseBody(c.req.raw, detokenizeRequest)
    const model = state.get()
    state.checkModel(body.model)
    checkTokenIds(body.tokens, model.info, 'tokens')
    return c.json({ content: model.detokenize(body.tokens, { skipSpecialTokens: false }) })
  })
  return app
}
