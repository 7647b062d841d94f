// The openai npm SDK, unmodified, against the live server.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { apiKey, assertUsage, baseURL, echoOf, missingModel, model } from "./_env.mjs";

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });

test("models.list pages through the agents and retrieve finds one", async () => {
  const ids = [];
  for await (const entry of client.models.list()) {
    assert.equal(entry.object, "model");
    assert.equal(typeof entry.created, "number");
    ids.push(entry.id);
  }
  assert.deepEqual(ids, [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
});

test("a plain completion has the answer, finish reason and usage", async () => {
  const completion = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "hello there" }],
  });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.model, model);
  assert.equal(completion.choices[0].message.role, "assistant");
  assert.equal(completion.choices[0].message.content, echoOf("hello there"));
  assert.equal(completion.choices[0].finish_reason, "stop");
  const { prompt_tokens, completion_tokens, total_tokens } = completion.usage;
  assertUsage(prompt_tokens, completion_tokens, total_tokens);
});

test("a stream with include_usage ends with a usage chunk", async () => {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "stream me" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert.equal(text, echoOf("stream me"));
  const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
  assert.deepEqual(finish.map((c) => c.choices[0].finish_reason), ["stop"]);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assertUsage(last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens);
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
});

test("the stream helper accumulates a final completion", async () => {
  const runner = client.chat.completions.stream({
    model,
    messages: [{ role: "user", content: "helper" }],
  });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, echoOf("helper"));
  assert.equal(final.choices[0].finish_reason, "stop");
});

test("an unknown model is a NotFoundError with the OpenAI error fields", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: missingModel, messages: [{ role: "user", content: "x" }] }),
    (error) => {
      assert.ok(error instanceof OpenAI.NotFoundError, `got ${error?.constructor?.name}`);
      assert.equal(error.status, 404);
      assert.equal(error.code, "model_not_found");
      assert.equal(error.param, "model");
      return true;
    },
  );
});

test("a bad request is a BadRequestError naming the parameter", async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: [] }),
    (error) => {
      assert.ok(error instanceof OpenAI.BadRequestError, `got ${error?.constructor?.name}`);
      assert.equal(error.param, "messages");
      return true;
    },
  );
});
