// The openai npm SDK on scripted upstream answers.  tests/test_clients_js.py
// queues the upstream replies for these tests IN THIS ORDER: keep the
// tests here and the replies there in step.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { apiKey, baseURL, model } from "./_env.mjs";

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });

test("reasoning streams as reasoning_content deltas, apart from content", async () => {
  // Reply 1: reasoning "Let me think", content "42".
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "6 x 7?" }],
    stream: true,
  });
  let reasoning = "";
  let content = "";
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta ?? {};
    reasoning += delta.reasoning_content ?? "";
    content += delta.content ?? "";
  }
  assert.equal(reasoning, "Let me think");
  assert.equal(content, "42");
});

test("a failure after streaming began is raised as an APIError", async () => {
  // Reply 2: the upstream is cut after its first content piece.
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "break" }],
    stream: true,
  });
  let content = "";
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) content += chunk.choices[0]?.delta?.content ?? "";
    })(),
    (error) => {
      assert.ok(error instanceof OpenAI.APIError, `got ${error?.constructor?.name}`);
      assert.match(error.message, /fake|upstream|stream/i);
      return true;
    },
  );
  assert.equal(content, "a");
});
