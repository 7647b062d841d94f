// The @a2a-js/sdk client, unmodified, against the live server's A2A 1.0
// headend: the card resolved from /a2a/<agent>, a blocking send, a stream
// on each binding, get, list, cancel of a finished task and an unknown
// one as the SDK's error classes. The fake upstream answers "echo: " and
// the last user message, streamed word by word.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ClientFactory,
  ClientFactoryOptions,
} from "@a2a-js/sdk/client";
import {
  GetTaskRequest,
  ListTasksRequest,
  SendMessageRequest,
  TaskState,
} from "@a2a-js/sdk";
import { TaskNotCancelableError, TaskNotFoundError } from "@a2a-js/sdk/errors";
import { baseURL, echoOf, model } from "./_env.mjs";

const agentURL = `${baseURL.replace(/\/v1$/, "")}/a2a/${model}`;

function request(text, contextId) {
  return SendMessageRequest.fromJSON({
    message: {
      messageId: `m-${Math.random().toString(16).slice(2)}`,
      role: "ROLE_USER",
      parts: [{ text }],
      ...(contextId ? { contextId } : {}),
    },
  });
}

function answerOf(task) {
  return task.artifacts
    .flatMap((artifact) => artifact.parts)
    .map((part) => part.content?.value ?? "")
    .join("");
}

async function client(preferred) {
  const options = preferred
    ? ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
        preferredTransports: [preferred],
      })
    : undefined;
  // The JS resolver resolves its relative card path against the base URL:
  // the agent's base needs its trailing slash.
  return new ClientFactory(options).createFromUrl(`${agentURL}/`);
}

test("the card names the agent and both bindings at 1.0", async () => {
  const a2a = await client();
  const card = await a2a.getAgentCard();
  assert.equal(card.name, model);
  assert.deepEqual(
    card.supportedInterfaces.map((i) => [i.protocolBinding, i.url, i.protocolVersion]),
    [
      ["JSONRPC", agentURL, "1.0"],
      ["HTTP+JSON", agentURL, "1.0"],
    ],
  );
  assert.equal(card.capabilities.streaming, true);
});

test("a blocking send answers the completed task", async () => {
  const a2a = await client();
  const task = await a2a.sendMessage(request("Hello from JavaScript"));
  assert.equal(task.status.state, TaskState.TASK_STATE_COMPLETED);
  assert.equal(answerOf(task), echoOf("Hello from JavaScript"));
  // The SDK takes ts-proto values: plain objects go through fromJSON.
  const got = await a2a.getTask(GetTaskRequest.fromJSON({ id: task.id, historyLength: 1 }));
  assert.equal(got.history.length, 1);
  assert.equal(got.history[0].parts[0].content.value, echoOf("Hello from JavaScript"));
  const listed = await a2a.listTasks(ListTasksRequest.fromJSON({ contextId: task.contextId }));
  assert.deepEqual(
    listed.tasks.map((t) => t.id),
    [task.id],
  );
  await assert.rejects(a2a.cancelTask({ id: task.id }), TaskNotCancelableError);
  await assert.rejects(
    a2a.getTask(GetTaskRequest.fromJSON({ id: "no-such-task" })),
    TaskNotFoundError,
  );
});

for (const binding of ["JSONRPC", "HTTP+JSON"]) {
  test(`a stream on ${binding}: the task, answer chunks, the completed status`, async () => {
    const a2a = await client(binding);
    const events = [];
    for await (const event of a2a.sendMessageStream(request(`Stream over ${binding}`))) {
      events.push(event.payload);
    }
    assert.equal(events[0].$case, "task");
    const text = events
      .filter((e) => e.$case === "artifactUpdate")
      .flatMap((e) => e.value.artifact.parts)
      .map((part) => part.content.value)
      .join("");
    assert.equal(text, echoOf(`Stream over ${binding}`));
    const last = events.at(-1);
    assert.equal(last.$case, "statusUpdate");
    assert.equal(last.value.status.state, TaskState.TASK_STATE_COMPLETED);
  });
}
