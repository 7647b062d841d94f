// The Vercel AI SDK on scripted upstream answers.  tests/test_clients_js.py
// queues the upstream replies for these tests IN THIS ORDER: keep the
// tests here and the replies there in step.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateText, streamText } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { apiKey, baseURL, model } from "./_env.mjs";

const provider = createOpenAICompatible({ name: "ai-agent", baseURL, apiKey, includeUsage: true });

test("reasoning_content deltas become reasoning parts, apart from the text", async () => {
  // Reply 1: reasoning "Let me think", content "42", usage 9 + 2.
  const result = streamText({ model: provider(model), prompt: "6 x 7?", maxRetries: 0 });
  const types = [];
  for await (const part of result.fullStream) types.push(part.type);
  assert.ok(!types.includes("error"), `parts: ${types.join(", ")}`);
  assert.equal(await result.reasoningText, "Let me think");
  assert.equal(await result.text, "42");
  const usage = await result.usage;
  assert.deepEqual([usage.inputTokens, usage.outputTokens], [9, 2]);
  assert.ok(types.indexOf("reasoning-start") < types.indexOf("text-start"), types.join(", "));
});

test("a non-streamed answer carries reasoning_content as reasoning", async () => {
  // Reply 2: the same, not streamed.
  const result = await generateText({ model: provider(model), prompt: "6 x 7?", maxRetries: 0 });
  assert.equal(result.reasoningText, "Let me think");
  assert.equal(result.text, "42");
});

test("a failure after streaming began arrives as an error part", async () => {
  // Reply 3: the upstream is cut after its first content piece.
  const errors = [];
  const result = streamText({
    model: provider(model),
    prompt: "break",
    maxRetries: 0,
    onError: ({ error }) => errors.push(error),
  });
  const parts = [];
  for await (const part of result.fullStream) parts.push(part);
  const failures = parts.filter((part) => part.type === "error");
  assert.equal(failures.length, 1, parts.map((p) => p.type).join(", "));
  assert.equal(errors.length, 1);
  const text = parts
    .filter((part) => part.type === "text-delta")
    .map((part) => part.text)
    .join("");
  assert.equal(text, "a");
  assert.equal(await result.finishReason, "error");
});
