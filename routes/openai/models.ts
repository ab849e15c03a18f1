/**
 * @module
 * GET /v1/models and /v1/models/:id: the served model, with its context length and whether its
 * weights are random (the generated default checkpoint), so a client can tell it is not a real model.
 */

import { Hono } from 'hono'
import { ApiError } from '../errors.ts'
import type { AppState } from '../state.ts'

function entry(state: AppState, id: string) {
  const info = state.get().info
  return {
    id,
    object: 'model',
    created: state.created,
    owned_by: 'minicpm-edge',
    root: info.id,
    max_model_len: info.nCtx,
    context_length: info.nCtx,
    random_weights: info.randomWeights,
    // InfLLM v2 sparse attention as loaded: null (dense at every length) or its variant (hf / v2).
    sparse_attention: info.sparseAttention === 'off' ? null : { variant: info.sparseAttention },
    // Weight format and what it means for batch-1 decode: every weight byte is read once per token.
    weight_dtype: info.weightDtype,
    weight_bytes: info.weightBytes,
    bits_per_weight: Number(((info.weightBytes * 8) / Math.max(1, info.nParams)).toFixed(3)),
    decode_roofline_tok_s_per_100gbs: Number((100e9 / Math.max(1, info.weightBytes)).toFixed(2)),
  }
}

/** Registers the model listing routes on a sub-app. */
export function modelRoutes(state: AppState): Hono {
  const app = new Hono()
  app.get('/v1/models', (c) =>
    c.json({ object: 'list', data: state.modelIds().map((id) => entry(state, id)) }),
  )
  app.get('/v1/models/:id{.+}', (c) => {
    const id = c.req.param('id')
    if (!state.modelIds().includes(id)) {
      throw new ApiError(
        404,
        `The model '${id}' does not exist`,
        'invalid_request_error',
        'model',
        'model_not_found',
      )
    }
    return c.json(entry(state, id))
  })
  return app
}
