// Continue's configuration from docs/integrations.md, parsed by Continue's
// own config-yaml package and used through Continue's openai-adapters (the
// OpenAI-compatible client Continue's CLI and core use for provider
// "openai"), against the live server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { parseConfigYaml } from "@continuedev/config-yaml";
import { constructLlmApi } from "@continuedev/openai-adapters";
import { assertUsage, baseURL, echoOf, missingModel, model } from "./_env.mjs";

// The documented config.yaml, with its base URL pointed at the live server.
async function documentedConfig() {
  const path = new URL("../../docs/integrations/continue.config.yaml", import.meta.url);
  const text = (await readFile(path, "utf8"))
    .replaceAll("http://127.0.0.1:8082/v1", baseURL)
    .replaceAll("model: chat", `model: ${model}`);
  return parseConfigYaml(text);
}

async function api() {
  const config = await documentedConfig();
  const block = config.models[0];
  const llm = constructLlmApi({ provider: block.provider, apiBase: block.apiBase, apiKey: block.apiKey });
  assert.ok(llm, "Continue built no client for this configuration");
  return { llm, block };
}

test("the documented config.yaml parses and asks for chat roles only", async () => {
  const { block } = await api();
  assert.equal(block.provider, "openai");
  assert.ok(!block.roles.includes("autocomplete"), "autocomplete needs /v1/completions");
  assert.equal(block.useLegacyCompletionsEndpoint, false);
});

test("the model list has the agent", async () => {
  const { llm } = await api();
  const models = await llm.list();
  assert.deepEqual(models.map((m) => m.id), [model]);
});

test("a streamed chat has the answer and usage", async () => {
  const { llm, block } = await api();
  let text = "";
  let usage;
  const request = { model: block.model, messages: [{ role: "user", content: "stream me" }], stream: true };
  for await (const chunk of llm.chatCompletionStream(request, new AbortController().signal)) {
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(text, echoOf("stream me"));
  assert.ok(usage, "no usage chunk");
  assertUsage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens);
});

test("a plain chat has the answer", async () => {
  const { llm, block } = await api();
  const request = { model: block.model, messages: [{ role: "user", content: "hello" }] };
  const completion = await llm.chatCompletionNonStream(request, new AbortController().signal);
  assert.equal(completion.choices[0].message.content, echoOf("hello"));
});

test("an unknown model is a 404 error", async () => {
  const { llm } = await api();
  const request = { model: missingModel, messages: [{ role: "user", content: "x" }] };
  await assert.rejects(llm.chatCompletionNonStream(request, new AbortController().signal), (error) => {
    assert.equal(error.status, 404);
    return true;
  });
});
