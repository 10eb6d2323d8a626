/* SPDX-License-Identifier: Apache-2.0 */
/* Translation of a client's request body, Anthropic to OpenAI (see fuzz_translate.h). */
#include "fuzz_translate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tr_request(DP_API_ANTHROPIC, DP_API_OPENAI, data, size);
    return 0;
}
