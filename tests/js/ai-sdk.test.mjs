// The Vercel AI SDK (ai + @ai-sdk/openai-compatible), unmodified, against
// the live server.  The provider validates every response and every stream
// chunk against its schemas, so a shape it does not accept fails here.
// The AI SDK has no model-listing call: the model is checked by its id
// coming back in the response metadata.
import { test } from "node:test";
import assert from "node:assert/strict";
import { APICallError, generateText, streamText } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { apiKey, assertUsage, baseURL, echoOf, missingModel, model } from "./_env.mjs";

const provider = createOpenAICompatible({ name: "ai-agent", baseURL, apiKey, includeUsage: true });

test("generateText returns the answer, finish reason, usage and model id", async () => {
  const result = await generateText({ model: provider(model), prompt: "hello there", maxRetries: 0 });
  assert.equal(result.text, echoOf("hello there"));
  assert.equal(result.finishReason, "stop");
  assert.deepEqual(result.warnings, []);
  assert.equal(result.response.modelId, model);
  assertUsage(result.usage.inputTokens, result.usage.outputTokens, result.usage.totalTokens);
});

test("streamText passes chunk validation and reports usage (includeUsage)", async () => {
  const errors = [];
  const result = streamText({
    model: provider(model),
    prompt: "stream me",
    maxRetries: 0,
    onError: ({ error }) => errors.push(error),
  });
  const types = [];
  for await (const part of result.fullStream) types.push(part.type);
  assert.deepEqual(errors, []);
  assert.ok(!types.includes("error"), `parts: ${types.join(", ")}`);
  assert.equal(await result.text, echoOf("stream me"));
  assert.equal(await result.finishReason, "stop");
  const usage = await result.usage;
  assertUsage(usage.inputTokens, usage.outputTokens, usage.totalTokens);
  assert.equal((await result.response).modelId, model);
});

test("an unknown model is an APICallError with status 404 and the server's message", async () => {
  await assert.rejects(
    generateText({ model: provider(missingModel), prompt: "x", maxRetries: 0 }),
    (error) => {
      assert.ok(APICallError.isInstance(error), `got ${error?.name}`);
      assert.equal(error.statusCode, 404);
      assert.equal(error.isRetryable, false);
      assert.match(error.message, /does not exist/);
      return true;
    },
  );
});
