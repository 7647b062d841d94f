// The @anthropic-ai/sdk npm SDK, unmodified, against the live server's
// Anthropic Messages API. tests/test_clients_js.py scripts the fake
// upstream: a call of the client's get_weather tool, then "Sunny."; every
// later call echoes the last user message.
import { test } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { jsonSchemaOutputFormat } from "@anthropic-ai/sdk/helpers/json-schema";
import { baseURL, echoOf, missingModel, model } from "./_env.mjs";

const client = new Anthropic({
  baseURL: baseURL.replace(/\/v1$/, ""),
  apiKey: "unused-key",
  maxRetries: 0,
  timeout: 20_000,
});

const weather = {
  name: "get_weather",
  description: "The weather in a city",
  input_schema: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  },
};

test("a client tool call comes back as tool_use and its result is used", async () => {
  const question = { role: "user", content: "Weather in Paris?" };
  const first = await client.messages.create({
    model,
    max_tokens: 256,
    messages: [question],
    tools: [weather],
  });
  assert.equal(first.stop_reason, "tool_use");
  const call = first.content.find((block) => block.type === "tool_use");
  assert.equal(call.name, "get_weather");
  assert.deepEqual(call.input, { city: "Paris" });
  const second = await client.messages.create({
    model,
    max_tokens: 256,
    tools: [weather],
    messages: [
      question,
      { role: "assistant", content: first.content },
      {
        role: "user",
        content: [{ type: "tool_result", tool_use_id: call.id, content: "sunny" }],
      },
    ],
  });
  assert.equal(second.stop_reason, "end_turn");
  assert.equal(second.content.at(-1).text, "Sunny.");
});

test("models.list pages through the agents in Anthropic's shape", async () => {
  const ids = [];
  for await (const entry of client.models.list()) {
    assert.equal(entry.type, "model");
    assert.ok(!Number.isNaN(Date.parse(entry.created_at)));
    ids.push(entry.id);
  }
  assert.deepEqual(ids, [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.display_name, model);
});

test("a plain message has the answer, stop reason and usage", async () => {
  const message = await client.messages.create({
    model,
    max_tokens: 64,
    messages: [{ role: "user", content: "hello there" }],
  });
  assert.match(message.id, /^msg_/);
  assert.equal(message.type, "message");
  assert.equal(message.model, model);
  assert.equal(message.content[0].type, "text");
  assert.equal(message.content[0].text, echoOf("hello there"));
  assert.equal(message.stop_reason, "end_turn");
  assert.ok(message.usage.input_tokens > 0);
  assert.ok(message.usage.output_tokens > 0);
});

test("messages.stream emits text and assembles the final message", async () => {
  const pieces = [];
  const stream = client.messages.stream({
    model,
    max_tokens: 64,
    messages: [{ role: "user", content: "stream me please" }],
  });
  stream.on("text", (text) => pieces.push(text));
  const message = await stream.finalMessage();
  assert.ok(pieces.length > 1, `pieces: ${JSON.stringify(pieces)}`);
  assert.equal(pieces.join(""), echoOf("stream me please"));
  // No thinking asked for: the answer is the first and only block.
  assert.deepEqual(
    message.content.map((block) => block.type),
    ["text"],
  );
  assert.equal(message.content[0].text, echoOf("stream me please"));
  assert.equal(message.stop_reason, "end_turn");
});

test("messages.parse sends its JSON schema and parses the answer", async () => {
  // tests/test_clients_js.py answers the calls with an output format with
  // this JSON, and checks that the upstream got the schema.
  const message = await client.messages.parse({
    model,
    max_tokens: 64,
    messages: [{ role: "user", content: "Title this session" }],
    output_config: {
      format: jsonSchemaOutputFormat({
        type: "object",
        properties: { title: { type: "string" } },
        required: ["title"],
        additionalProperties: false,
      }),
    },
  });
  assert.equal(message.content[0].type, "text");
  assert.deepEqual(message.parsed_output, { title: "A parsed title" });
});

test("countTokens answers an estimate", async () => {
  const counted = await client.messages.countTokens({
    model,
    messages: [{ role: "user", content: "count these words" }],
  });
  assert.ok(Number.isInteger(counted.input_tokens) && counted.input_tokens > 0);
});

test("errors are the SDK's classes with Anthropic's error types", async () => {
  await assert.rejects(
    client.messages.create({
      model: missingModel,
      max_tokens: 5,
      messages: [{ role: "user", content: "x" }],
    }),
    (error) => {
      assert.ok(error instanceof Anthropic.NotFoundError, String(error));
      assert.equal(error.error.error.type, "not_found_error");
      return true;
    },
  );
  await assert.rejects(
    client.messages.create({
      model,
      max_tokens: 5,
      messages: [{ role: "user", content: "x" }],
      tools: [{ type: "web_search_20250305", name: "web_search" }],
    }),
    (error) => {
      assert.ok(error instanceof Anthropic.BadRequestError, String(error));
      assert.equal(error.error.error.type, "invalid_request_error");
      assert.match(error.message, /web_search_20250305/);
      return true;
    },
  );
});
