// save_quantized: a loaded (quantized) model written back as a hub-layout directory, so that quantizing once
// and serving many times costs nothing at start-up. Formats (README "Quantized weights"):
//   q4: GPTQ int4, AutoGPTQ layout (qweight / qzeros / scales / g_idx, quantization_config quant_method "gptq");
//   q8: the project's own "minicpm_q8": prefix.qweight I8 [N, K] (the engine's q8 rows as is, mapped at load)
//       and prefix.scales F16 [N, ceil(K / g)] with g = min(group_size, K).
#pragma once

#include "model/weights.h"

#include <string>

namespace minicpm {

// Writes out_dir/model.safetensors and out_dir/config.json (src_dir/config.json with quantization_config set).
// The weights must be in host memory (CPU backend). Throws naming the tensor that cannot be written.
void save_quantized(const model_weights & w, const model_config & c, const std::string & src_dir,
                    const std::string & out_dir);

}  // namespace minicpm
