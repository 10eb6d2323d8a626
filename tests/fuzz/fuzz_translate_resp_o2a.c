/* SPDX-License-Identifier: Apache-2.0 */
/* Translation of an upstream's response and error bodies, OpenAI to Anthropic (see
 * fuzz_translate.h). */
#include "fuzz_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tr_response(DP_API_OPENAI, DP_API_ANTHROPIC, data, size);
    return 0;
}
