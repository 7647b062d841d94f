// LangChain.js (@langchain/openai ChatOpenAI), unmodified, against the live
// server.  LangChain has no model-listing call: the model is checked by
// its name coming back in the response metadata.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatOpenAI } from "@langchain/openai";
import { apiKey, assertUsage, baseURL, echoOf, missingModel, model } from "./_env.mjs";

// streamUsage asks for stream_options.include_usage; LangChain only turns
// it on by itself for OpenAI's own URL.
function chat(name = model) {
  return new ChatOpenAI({
    model: name,
    apiKey,
    configuration: { baseURL },
    streamUsage: true,
    maxRetries: 0,
    timeout: 20_000,
  });
}

test("invoke returns the answer with usage metadata and the model name", async () => {
  const message = await chat().invoke("hello there");
  assert.equal(message.content, echoOf("hello there"));
  assert.equal(message.response_metadata.model_name, model);
  assert.equal(message.response_metadata.finish_reason, "stop");
  const usage = message.usage_metadata;
  assertUsage(usage.input_tokens, usage.output_tokens, usage.total_tokens);
});

test("stream yields the answer in pieces and usage metadata at the end", async () => {
  let full;
  let pieces = 0;
  for await (const chunk of await chat().stream("stream me")) {
    full = full === undefined ? chunk : full.concat(chunk);
    pieces += 1;
  }
  assert.ok(pieces > 2, `${pieces} chunks`);
  assert.equal(full.content, echoOf("stream me"));
  const usage = full.usage_metadata;
  assert.ok(usage, "no usage_metadata: was stream_options.include_usage honoured?");
  assertUsage(usage.input_tokens, usage.output_tokens, usage.total_tokens);
});

test("an unknown model raises an error with status 404", async () => {
  await assert.rejects(chat(missingModel).invoke("x"), (error) => {
    assert.equal(error.status, 404);
    assert.match(error.message, /does not exist/);
    return true;
  });
});
