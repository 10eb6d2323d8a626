/* SPDX-License-Identifier: Apache-2.0 */
/** The built-in provider catalog (catalog.h), compiled in: no file to ship or to find at run
 * time.
 *
 * Prices are the providers' public list prices per million tokens (input, output) as of
 * cp_catalog_date, in the entry's currency, for the lowest tier where a provider prices by prompt
 * length (DashScope, Zhipu, Gemini) and without cache discounts. They change without notice:
 * they are a starting point for a deployment's price, which is what usage is billed at. Context
 * windows are in tokens. */

#include <string.h>

#include "catalog.h"

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

const char cp_catalog_date[] = "2025-10";

static const struct cp_catalog_model openai_models[] = {
    {"gpt-4.1", 2.00, 8.00, 1047576}, {"gpt-4.1-mini", 0.40, 1.60, 1047576},
    {"gpt-4o", 2.50, 10.00, 128000},  {"gpt-4o-mini", 0.15, 0.60, 128000},
    {"o3", 2.00, 8.00, 200000},       {"o4-mini", 1.10, 4.40, 200000},
};

static const struct cp_catalog_model anthropic_models[] = {
    {"claude-opus-4-1", 15.00, 75.00, 200000},       {"claude-sonnet-4-5", 3.00, 15.00, 200000},
    {"claude-sonnet-4-0", 3.00, 15.00, 200000},      {"claude-haiku-4-5", 1.00, 5.00, 200000},
    {"claude-3-5-haiku-latest", 0.80, 4.00, 200000},
};

static const struct cp_catalog_model dashscope_models[] = {
    {"qwen-max", 2.40, 9.60, 32768},     {"qwen-plus", 0.80, 2.00, 131072},
    {"qwen-turbo", 0.30, 0.60, 1000000}, {"qwen3-coder-plus", 4.00, 16.00, 1048576},
    {"qwen-long", 0.50, 2.00, 10000000},
};

static const struct cp_catalog_model minimax_models[] = {
    {"MiniMax-M2", 0.30, 1.20, 204800},
    {"MiniMax-M1", 0.40, 2.20, 1000000},
    {"MiniMax-Text-01", 0.20, 1.10, 1000192},
};

static const struct cp_catalog_model zhipu_models[] = {
    {"glm-4.6", 2.00, 8.00, 200000},     {"glm-4.5", 2.00, 8.00, 131072},
    {"glm-4.5-air", 0.80, 2.00, 131072}, {"glm-4-plus", 5.00, 5.00, 131072},
    {"glm-4-flash", 0.00, 0.00, 131072},
};

/* DeepSeek serves two model ids, both on DeepSeek-V3.2 since 2025-09. */
static const struct cp_catalog_model deepseek_models[] = {
    {"deepseek-chat", 0.28, 0.42, 131072},
    {"deepseek-reasoner", 0.28, 0.42, 131072},
};

static const struct cp_catalog_model moonshot_models[] = {
    {"kimi-k2-0905-preview", 4.00, 16.00, 262144}, {"kimi-k2-turbo-preview", 8.00, 58.00, 262144},
    {"moonshot-v1-8k", 2.00, 10.00, 8192},         {"moonshot-v1-32k", 5.00, 20.00, 32768},
    {"moonshot-v1-128k", 10.00, 30.00, 131072},
};

/* Azure's global standard deployments are priced as OpenAI's models. */
static const struct cp_catalog_model azure_models[] = {
    {"gpt-4.1", 2.00, 8.00, 1047576},
    {"gpt-4o", 2.50, 10.00, 128000},
    {"gpt-4o-mini", 0.15, 0.60, 128000},
    {"o4-mini", 1.10, 4.40, 200000},
};

static const struct cp_catalog_model gemini_models[] = {
    {"gemini-2.5-pro", 1.25, 10.00, 1048576},
    {"gemini-2.5-flash", 0.30, 2.50, 1048576},
    {"gemini-2.5-flash-lite", 0.10, 0.40, 1048576},
    {"gemini-2.0-flash", 0.10, 0.40, 1048576},
};

/* Self-hosted: no list price. */
static const struct cp_catalog_model ollama_models[] = {
    {"llama3.1:8b", 0, 0, 131072}, {"llama3.2:3b", 0, 0, 131072}, {"qwen2.5:7b", 0, 0, 32768},
    {"gemma3:4b", 0, 0, 131072},   {"mistral:7b", 0, 0, 32768},
};

static const struct cp_catalog_model vllm_models[] = {
    {"meta-llama/Llama-3.1-8B-Instruct", 0, 0, 131072},
    {"Qwen/Qwen2.5-7B-Instruct", 0, 0, 32768},
    {"mistralai/Mistral-7B-Instruct-v0.3", 0, 0, 32768},
};

const struct cp_catalog_entry cp_catalog[] = {
    {.id = "openai",
     .name = "OpenAI",
     .base_url = "https://api.openai.com/v1",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "USD",
     .notes = "API keys from platform.openai.com; an organization or project header can go in "
              "headers.",
     .models = openai_models,
     .n_models = LEN(openai_models)},
    {.id = "anthropic",
     .name = "Anthropic",
     .base_url = "https://api.anthropic.com/v1",
     .format = "anthropic",
     .auth_style = "header",
     .auth_name = "x-api-key",
     .api_version = "2023-06-01",
     .price_currency = "USD",
     .notes = "Messages API; api_version is sent as the anthropic-version header.",
     .models = anthropic_models,
     .n_models = LEN(anthropic_models)},
    {.id = "dashscope",
     .name = "Alibaba Cloud Bailian (DashScope)",
     .base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "CNY",
     .notes = "OpenAI-compatible mode. International accounts use "
              "https://dashscope-intl.aliyuncs.com/compatible-mode/v1 (priced in USD).",
     .models = dashscope_models,
     .n_models = LEN(dashscope_models)},
    {.id = "minimax",
     .name = "MiniMax",
     .base_url = "https://api.minimax.io/v1",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "USD",
     .notes = "International endpoint; accounts in mainland China use "
              "https://api.minimaxi.com/v1 (priced in CNY).",
     .models = minimax_models,
     .n_models = LEN(minimax_models)},
    {.id = "zhipu",
     .name = "Zhipu AI (BigModel)",
     .base_url = "https://open.bigmodel.cn/api/paas/v4",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "CNY",
     .notes = "OpenAI-compatible; the international platform is https://api.z.ai/api/paas/v4.",
     .models = zhipu_models,
     .n_models = LEN(zhipu_models)},
    {.id = "deepseek",
     .name = "DeepSeek",
     .base_url = "https://api.deepseek.com/v1",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "USD",
     .notes = "Input price is for cache misses; cache hits are cheaper.",
     .models = deepseek_models,
     .n_models = LEN(deepseek_models)},
    {.id = "moonshot",
     .name = "Moonshot AI (Kimi)",
     .base_url = "https://api.moonshot.cn/v1",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "CNY",
     .notes = "Mainland endpoint; the international one is https://api.moonshot.ai/v1 (priced in "
              "USD).",
     .models = moonshot_models,
     .n_models = LEN(moonshot_models)},
    {.id = "azure-openai",
     .name = "Azure OpenAI",
     .base_url = "https://<resource>.openai.azure.com/openai",
     .format = "azure",
     .auth_style = "header",
     .auth_name = "api-key",
     .api_version = "2024-10-21",
     .price_currency = "USD",
     .notes = "Replace <resource> in base_url with your Azure OpenAI resource name; a "
              "deployment's model is your Azure deployment name.",
     .models = azure_models,
     .n_models = LEN(azure_models)},
    {.id = "gemini",
     .name = "Google Gemini",
     .base_url = "https://generativelanguage.googleapis.com/v1beta/openai",
     .format = "openai",
     .auth_style = "bearer",
     .price_currency = "USD",
     .notes = "Gemini's OpenAI-compatible endpoint, with a Gemini API key from AI Studio.",
     .models = gemini_models,
     .n_models = LEN(gemini_models)},
    {.id = "ollama",
     .name = "Ollama",
     .base_url = "http://localhost:11434/v1",
     .format = "openai",
     .auth_style = "none",
     .price_currency = "USD",
     .notes = "Self-hosted; a model id is a tag pulled with `ollama pull`.",
     .models = ollama_models,
     .n_models = LEN(ollama_models)},
    {.id = "vllm",
     .name = "vLLM",
     .base_url = "http://localhost:8000/v1",
     .format = "openai",
     .auth_style = "none",
     .price_currency = "USD",
     .notes = "Self-hosted; the model id is the name given to `vllm serve`. Use auth_style "
              "bearer with an api_key if the server runs with --api-key.",
     .models = vllm_models,
     .n_models = LEN(vllm_models)},
};
const size_t cp_catalog_len = LEN(cp_catalog);

const struct cp_catalog_entry *cp_catalog_find(const char *id)
{
    for (size_t i = 0; i < cp_catalog_len; i++)
        if (strcmp(cp_catalog[i].id, id) == 0)
            return &cp_catalog[i];
    return NULL;
}
