/* SPDX-License-Identifier: Apache-2.0 */
/* Translation of an upstream's response and error bodies, Anthropic to OpenAI (see
 * fuzz_translate.h). */
#include "fuzz_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tr_response(DP_API_ANTHROPIC, DP_API_OPENAI, data, size);
    return 0;
}
