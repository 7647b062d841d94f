// LibreChat's custom endpoint from docs/integrations/librechat.yaml:
// validated by LibreChat's own configuration schema (librechat-data-provider),
// then the requests LibreChat makes with it replayed against the live server
// through LangChain's ChatOpenAI, which LibreChat's agents use for custom
// endpoints.  tests/test_clients_js.py scripts the title reply and checks on
// the server side that the title went through the task shortcut and that the
// headers were recorded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import yaml from "js-yaml";
import { configSchema, endpointSchema } from "librechat-data-provider";
import { ChatOpenAI } from "@langchain/openai";
import { baseURL, echoOf, model } from "./_env.mjs";

async function documentedEndpoint() {
  const path = new URL("../../docs/integrations/librechat.yaml", import.meta.url);
  const config = yaml.load(await readFile(path, "utf8"));
  const parsed = configSchema.safeParse(config);
  assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));
  const endpoint = config.endpoints.custom[0];
  const strict = endpointSchema.safeParse(endpoint);
  assert.ok(strict.success, JSON.stringify(strict.error?.issues));
  return { ...endpoint, baseURL: endpoint.baseURL.replace("http://127.0.0.1:8082/v1", baseURL) };
}

// LibreChat fills the header placeholders per request.
function headersFor(endpoint) {
  const values = {
    "{{LIBRECHAT_USER_ID}}": "librechat-user-1",
    "{{LIBRECHAT_BODY_CONVERSATIONID}}": "librechat-convo-1",
    "{{LIBRECHAT_BODY_MESSAGEID}}": "librechat-message-1",
  };
  return Object.fromEntries(
    Object.entries(endpoint.headers ?? {}).map(([name, value]) => [name, values[value] ?? value]),
  );
}

function chat(endpoint, name) {
  return new ChatOpenAI({
    model: name,
    apiKey: endpoint.apiKey,
    configuration: { baseURL: endpoint.baseURL, defaultHeaders: headersFor(endpoint) },
    streamUsage: true,
    maxRetries: 0,
    timeout: 20_000,
  });
}

test("the documented endpoint passes LibreChat's configuration schema", async () => {
  const endpoint = await documentedEndpoint();
  assert.equal(endpoint.models.fetch, true);
  assert.equal(endpoint.titleConvo, true);
  assert.equal(endpoint.titleModel, "current_model");
  assert.equal(endpoint.titleMethod, "completion");
});

test("fetching models (models.fetch) finds the agent", async () => {
  const endpoint = await documentedEndpoint();
  const response = await fetch(`${endpoint.baseURL}/models`, {
    headers: { Authorization: `Bearer ${endpoint.apiKey}` },
  });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.deepEqual(body.data.map((m) => m.id), [model]);
});

test("the title request (titleMethod completion) gets the title", async () => {
  // The one scripted reply, used by this first chat completion: "Friendly Greeting".
  const endpoint = await documentedEndpoint();
  const prompt =
    "Provide a concise, 5-word-or-less title for the conversation, using title case " +
    "conventions. Only return the title itself.\n\nConversation:\n" +
    `User: hello there\nAI: ${echoOf("hello there")}`;
  const message = await chat(endpoint, model).invoke([{ role: "user", content: prompt }]);
  assert.equal(message.content, "Friendly Greeting");
});

test("a chat turn streams the agent's answer", async () => {
  // Served by the agent loop: the fake upstream echoes.
  const endpoint = await documentedEndpoint();
  let full;
  for await (const chunk of await chat(endpoint, model).stream("hello there")) {
    full = full === undefined ? chunk : full.concat(chunk);
  }
  assert.equal(full.content, echoOf("hello there"));
});
