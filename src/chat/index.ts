/** Chat prompt rendering from the model's own chat template. */

export { ChatTemplate, ChatTemplateError } from './template'
