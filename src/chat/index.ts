/** Chat prompt rendering from the model's own chat template. */

export { ChatTemplate, ChatTemplateBudgetError, ChatTemplateError, type TemplateConfig } from './template'
