// The Vercel AI SDK's OpenAI provider on the Responses API (.responses()),
// against /v1/responses.  tests/test_clients_js.py queues the upstream
// replies for these tests IN THIS ORDER: keep the tests here and the
// replies there in step.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { apiKey, baseURL, model } from "./_env.mjs";

// Every request body the provider sends, as it sent it.
const sentBodies = [];
const openai = createOpenAI({
  baseURL,
  apiKey,
  fetch: async (url, init) => {
    sentBodies.push(JSON.parse(init.body));
    return fetch(url, init);
  },
});

test("generateText over two turns refers to the stored answer by item_reference", async () => {
  // Replies 1 and 2: reasoning "Thinking of France." and "Paris.", then "Yes, Paris."
  const question = { role: "user", content: "Capital of France?" };
  const first = await generateText({
    model: openai.responses(model),
    messages: [question],
    maxRetries: 0,
  });
  assert.equal(first.text, "Paris.");
  assert.equal(first.reasoningText, "Thinking of France.");
  assert.match(first.response.id, /^resp_/);
  assert.equal(first.usage.inputTokens > 0, true);
  const second = await generateText({
    model: openai.responses(model),
    messages: [question, ...first.response.messages, { role: "user", content: "Sure?" }],
    maxRetries: 0,
  });
  assert.equal(second.text, "Yes, Paris.");
  const sent = sentBodies.at(-1);
  const references = (sent.input ?? []).filter((item) => item.type === "item_reference");
  // The reasoning item and the message, both by reference.
  assert.equal(references.length, 2, JSON.stringify(sent));
});

test("streamText with an executing tool: the call, its result, and the answer", async () => {
  // Replies 3 and 4: a get_weather call for Oslo, then "Cold in Oslo."
  const seen = [];
  const result = streamText({
    model: openai.responses(model),
    prompt: "Weather in Oslo?",
    maxRetries: 0,
    stopWhen: stepCountIs(3),
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        }),
        execute: async ({ city }) => {
          seen.push(city);
          return "cold";
        },
      }),
    },
  });
  const types = [];
  for await (const part of result.fullStream) types.push(part.type);
  assert.ok(!types.includes("error"), types.join(", "));
  assert.deepEqual(seen, ["Oslo"]);
  assert.equal(await result.text, "Cold in Oslo.");
  assert.ok(types.includes("tool-call"), types.join(", "));
});
