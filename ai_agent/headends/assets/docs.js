// The interactive page for /openapi.json: every operation, its summary,
// an example body, and a form that sends the request from this browser.
"use strict";

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attributes || {});
  for (const child of children) {
    node.append(child);
  }
  return node;
}

function resolve(spec, schema) {
  while (schema && schema.$ref) {
    schema = schema.$ref.split("/").slice(1).reduce((node, key) => node[key], spec);
  }
  return schema;
}

function exampleBody(spec, operation, models) {
  const content = operation.requestBody && operation.requestBody.content;
  if (!content || !content["application/json"]) {
    return null;
  }
  const schema = resolve(spec, content["application/json"].schema) || {};
  if (schema.example) {
    return schema.example;
  }
  const body = {};
  if (schema.properties && schema.properties.model) {
    body.model = models[0] || "MODEL";
  }
  if (schema.properties && schema.properties.messages) {
    body.messages = [{ role: "user", content: "Hello!" }];
  }
  return body;
}

// The methods an OpenAPI path item can hold; its other keys (parameters,
// summary, servers, ...) are not operations.
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

// Every operation of the document, as [path, method, operation].
function operations(spec) {
  const found = [];
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, operation] of Object.entries(item)) {
      if (METHODS.includes(method)) {
        found.push([path, method, operation]);
      }
    }
  }
  return found;
}

// What the page shows of an answer: the status line, then the body, JSON
// indented (an error envelope or an object is unreadable on one line),
// anything else (a stream's events, text) as it came.
function answerText(status, statusText, contentType, text) {
  let body = text;
  if (/^application\/(.+\+)?json\b/i.test(contentType || "")) {
    try {
      body = JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) {
      body = text;
    }
  }
  return status + " " + statusText + "\n\n" + body;
}

function operationView(spec, path, method, operation, models) {
  const output = element("pre", { hidden: true });
  const pathInput = element("input", { value: path, size: 40 });
  const example = exampleBody(spec, operation, models);
  const body = example === null ? null : element("textarea", {
    value: JSON.stringify(example, null, 2),
  });
  const send = element("button", { textContent: "Send" });
  send.addEventListener("click", async () => {
    output.hidden = false;
    output.textContent = "…";
    const headers = { "Content-Type": "application/json" };
    const typed = document.getElementById("key").value;
    if (typed) {
      headers.Authorization = "Bearer " + typed;
    }
    try {
      const response = await fetch(pathInput.value, {
        method: method.toUpperCase(),
        headers,
        body: body === null ? undefined : body.value,
      });
      const text = await response.text();
      output.textContent = answerText(
        response.status,
        response.statusText,
        response.headers.get("Content-Type"),
        text,
      );
    } catch (error) {
      output.textContent = String(error);
    }
  });
  return element(
    "details",
    {},
    element(
      "summary",
      {},
      element("span", { className: "method", textContent: method.toUpperCase() }),
      " ",
      element("code", { className: "path", textContent: path }),
      " — " + (operation.summary || ""),
    ),
    element("p", {}, element("label", {}, "Path: ", pathInput)),
    ...(body === null ? [] : [element("p", {}, "Body (JSON):"), body]),
    element("p", {}, send),
    output,
  );
}

async function main() {
  const status = document.getElementById("status");
  const list = document.getElementById("operations");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    const models = ((spec.components || {}).schemas || {}).ChatCompletionRequest
      ? (((spec.components.schemas.ChatCompletionRequest.properties || {}).model || {}).examples || [])
      : [];
    status.textContent = (spec.info.title || "API") + " " + (spec.info.version || "");
    for (const [path, method, operation] of operations(spec)) {
      list.append(operationView(spec, path, method, operation, models));
    }
  } catch (error) {
    status.textContent = "Could not load /openapi.json: " + error;
  }
}

// Run in a page; loaded elsewhere (the tests' node), only define the functions.
if (typeof document !== "undefined") {
  main();
}
