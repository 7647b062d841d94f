// The TypeScript MCP SDK's client (@modelcontextprotocol/sdk), unmodified,
// against the live server's /mcp (Streamable HTTP). tests/test_mcp_clients.py
// serves the agents coder and helper and scripts the helper's runs: an
// answer, a slow answer (2 s, with a 0.5 s progress heartbeat), a run held
// upstream until the call is cancelled.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { baseURL } from "./_env.mjs";

const url = new URL(baseURL.replace(/\/v1$/, "") + "/mcp");

async function connected() {
  const client = new Client({ name: "ts-sdk-test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(url));
  return client;
}

test("lists the agents, calls one with progress, survives a short timeout reset by progress, cancels", async () => {
  const client = await connected();
  try {
    const { tools } = await client.listTools();
    assert.deepEqual(tools.map((tool) => tool.name).sort(), ["coder", "helper"]);
    const helper = tools.find((tool) => tool.name === "helper");
    assert.equal(helper.description, "Knows the secret\n\nUsage: Ask it for the secret.");
    assert.deepEqual(helper.inputSchema.required, ["prompt"]);

    const notes = [];
    const answer = await client.callTool(
      { name: "helper", arguments: { prompt: "What is the secret?" } },
      CallToolResultSchema,
      { onprogress: (note) => notes.push(note) },
    );
    assert.equal(answer.isError, false);
    assert.equal(answer.content[0].text, "The secret is 7f3a.");
    assert.ok(notes.length >= 1, "no progress notification");
    const values = notes.map((note) => note.progress);
    assert.deepEqual(values, [...values].sort((a, b) => a - b));

    // A 1 s timeout that restarts on progress, over a 2 s run.
    const slow = await client.callTool(
      { name: "helper", arguments: { prompt: "slowly" } },
      CallToolResultSchema,
      { timeout: 1000, resetTimeoutOnProgress: true, onprogress: () => {} },
    );
    assert.equal(slow.content[0].text, "slow answer");

    // An aborted call: the SDK sends notifications/cancelled and gives up.
    const controller = new AbortController();
    const held = client.callTool(
      { name: "helper", arguments: { prompt: "hold" } },
      CallToolResultSchema,
      { signal: controller.signal, onprogress: () => controller.abort("enough") },
    );
    await assert.rejects(held);
  } finally {
    await client.close();
  }
});
