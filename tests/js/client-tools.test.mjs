// Client tools through real JavaScript clients: the openai npm SDK (its
// own tool loop, runTools), the Vercel AI SDK (generateText and
// streamText with tools that execute, several steps) and LangChain.js
// (bindTools, ToolMessage).  The agent has its own calculator (an MCP
// server); tests/test_clients_js.py queues the upstream replies for these
// tests IN THIS ORDER: keep the tests here and the replies there in step.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { ChatOpenAI } from "@langchain/openai";
import { HumanMessage, ToolMessage } from "@langchain/core/messages";
import { apiKey, baseURL, model } from "./_env.mjs";

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });
const provider = createOpenAICompatible({ name: "ai-agent", baseURL, apiKey });

const weatherParameters = {
  type: "object",
  properties: { city: { type: "string" } },
  required: ["city"],
};

test("openai: a client tool call comes back, and its result continues the run", async () => {
  // Reply 1: get_weather(Paris).  Reply 2: "Sunny in Paris."
  const tools = [
    { type: "function", function: { name: "get_weather", parameters: weatherParameters } },
  ];
  const messages = [{ role: "user", content: "Weather in Paris?" }];
  const first = await client.chat.completions.create({ model, messages, tools });
  assert.equal(first.choices[0].finish_reason, "tool_calls");
  const [call] = first.choices[0].message.tool_calls;
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: "sunny" });
  const second = await client.chat.completions.create({ model, messages, tools });
  assert.equal(second.choices[0].message.content, "Sunny in Paris.");
});

test("openai: runTools runs the client's function and finishes (streamed)", async () => {
  // Reply 3: get_weather(Oslo).  Reply 4: "Cold in Oslo."
  const asked = [];
  const runner = client.chat.completions.runTools({
    model,
    stream: true,
    messages: [{ role: "user", content: "Weather in Oslo?" }],
    tools: [
      {
        type: "function",
        function: {
          name: "get_weather",
          parameters: weatherParameters,
          parse: JSON.parse,
          function: ({ city }) => {
            asked.push(city);
            return "cold";
          },
        },
      },
    ],
  });
  assert.equal(await runner.finalContent(), "Cold in Oslo.");
  assert.deepEqual(asked, ["Oslo"]);
});

test("ai-sdk: generateText runs a hybrid turn: the agent's tool, then the client's", async () => {
  // Reply 5: calc__add(2, 3), run by the agent.  Reply 6: get_weather(Rome),
  // run here.  Reply 7: "5, and warm in Rome."
  const asked = [];
  const result = await generateText({
    model: provider(model),
    prompt: "2+3, and the weather in Rome?",
    maxRetries: 0,
    stopWhen: stepCountIs(4),
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: jsonSchema(weatherParameters),
        execute: async ({ city }) => {
          asked.push(city);
          return "warm";
        },
      }),
    },
  });
  assert.equal(result.text, "5, and warm in Rome.");
  assert.deepEqual(asked, ["Rome"]);
  assert.equal(result.steps.length, 2);
  assert.equal(result.steps[0].finishReason, "tool-calls");
  assert.ok(result.steps[0].reasoningText?.includes("calling calc__add"), result.steps[0].reasoningText);
});

test("ai-sdk: streamText streams a client tool call and continues", async () => {
  // Reply 8: get_weather(Lima).  Reply 9: "Mild in Lima."
  const asked = [];
  const result = streamText({
    model: provider(model),
    prompt: "Weather in Lima?",
    maxRetries: 0,
    stopWhen: stepCountIs(3),
    tools: {
      get_weather: tool({
        inputSchema: jsonSchema(weatherParameters),
        execute: async ({ city }) => {
          asked.push(city);
          return "mild";
        },
      }),
    },
  });
  const types = [];
  for await (const part of result.fullStream) types.push(part.type);
  assert.ok(!types.includes("error"), types.join(", "));
  assert.ok(types.includes("tool-call"), types.join(", "));
  assert.equal(await result.text, "Mild in Lima.");
  assert.deepEqual(asked, ["Lima"]);
});

test("langchain: bindTools gets the call; a ToolMessage continues", async () => {
  // Reply 10: get_weather(Kyiv).  Reply 11: "Snow in Kyiv."
  const chat = new ChatOpenAI({
    model,
    apiKey,
    configuration: { baseURL },
    maxRetries: 0,
  }).bindTools([
    { type: "function", function: { name: "get_weather", parameters: weatherParameters } },
  ]);
  const question = new HumanMessage("Weather in Kyiv?");
  const reply = await chat.invoke([question]);
  assert.deepEqual(
    reply.tool_calls.map((c) => [c.name, c.args]),
    [["get_weather", { city: "Kyiv" }]],
  );
  const answer = await chat.invoke([
    question,
    reply,
    new ToolMessage({ content: "-3 C", tool_call_id: reply.tool_calls[0].id }),
  ]);
  assert.equal(answer.content, "Snow in Kyiv.");
});
