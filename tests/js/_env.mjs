// Where the live server is: tests/test_clients_js.py starts it and passes
// its address in the environment.
import assert from "node:assert/strict";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: run these tests through tests/test_clients_js.py, ` +
        "which starts a live server and sets it",
    );
  }
  return value;
}

/** The server's OpenAI base URL, e.g. http://127.0.0.1:12345/v1 */
export const baseURL = required("AI_AGENT_BASE_URL");

/** The agent served as a model. */
export const model = process.env.AI_AGENT_MODEL ?? "chat";

/** Any key: the server under test does not check client keys. */
export const apiKey = "unused-key";

/** A model id the server does not serve. */
export const missingModel = "no-such-agent";

/**
 * The fake upstream answers "echo: " and the last user message, streamed
 * word by word.
 */
export function echoOf(text) {
  return `echo: ${text}`;
}

/**
 * Usage as the fake upstream counts it: prompt tokens are the words of
 * every message it received (the agent prompt included), completion
 * tokens the pieces it streamed; the total is their sum.
 */
export function assertUsage(prompt, completion, total) {
  assert.ok(Number.isInteger(prompt) && prompt > 0, `prompt tokens: ${prompt}`);
  assert.ok(Number.isInteger(completion) && completion > 0, `completion tokens: ${completion}`);
  assert.equal(total, prompt + completion);
}
