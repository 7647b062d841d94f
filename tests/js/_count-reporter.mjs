// A node:test reporter for tests/test_clients_js.py: at the end of a run it
// writes one JSON object naming the tests that passed, failed, were skipped
// or left as todo, so the Python side can refuse a file that registered no
// test (node --test exits 0 for it, counting the file itself as a test).
import path from "node:path";

export default async function* countTests(source) {
  const seen = { passed: [], failed: [], skipped: [], todo: [] };
  for await (const event of source) {
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    const { name, file, skip, todo, details } = event.data;
    if (details?.type === "suite") continue;
    // node --test stands in for a file that registered nothing with a test
    // named after the file itself (its absolute path on Node.js 20, the path
    // as given on the command line on 22); it is not one of the file's tests.
    if (file !== undefined && (name === file || path.resolve(name) === file)) continue;
    if (skip !== undefined) seen.skipped.push(name);
    else if (todo !== undefined) seen.todo.push(name);
    else if (event.type === "test:pass") seen.passed.push(name);
    else seen.failed.push(name);
  }
  yield JSON.stringify(seen) + "\n";
}
