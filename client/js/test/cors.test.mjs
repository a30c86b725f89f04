// Headless Chromium runs README.md's browser example from a page served on
// another origin (a second port): the module import, members(), the
// WebSocket and the event subscription all cross origins, so each needs
// the node's CORS answers.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { startServer, eventually, postJSON, launchChromium, repoRoot } from "./helpers.mjs";

// readmeExample returns the html block of README.md's JavaScript client section.
function readmeExample() {
  const readme = fs.readFileSync(path.join(repoRoot, "README.md"), "utf8");
  const sec = readme.slice(readme.indexOf("## JavaScript client"));
  const m = sec.match(/```html\n([\s\S]*?)```/);
  assert.ok(m, "README's JavaScript client section has an html example");
  return m[1];
}

test("README's browser example works from a page on another origin", async (t) => {
  const srv = await startServer(t, ["--leave-delay", "0"]);
  // bob is there before the page loads: members() must read him cross-origin.
  assert.equal((await postJSON(srv.base + "/v1/heartbeat", { user: "bob", room: "doc-42" })).status, 200);
  const example = readmeExample().replaceAll("https://presence.example.com", srv.base);
  assert.ok(example.includes(srv.base + "/ui/presenced.js"), "the example imports the module from the node");
  // The page shows what the example's `here` holds.
  const page = example.replace("</script>",
    'setInterval(() => { document.body.dataset.members = [...here].sort().join(","); }, 100);\n</script>');
  const site = http.createServer((req, res) => {
    if (req.url === "/presence-token") {
      res.writeHead(200, { "content-type": "text/plain" }).end(""); // the node runs open
      return;
    }
    res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><html><body>${page}</body></html>`);
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  t.after(() => site.close());
  const origin = `http://127.0.0.1:${site.address().port}`;
  assert.notEqual(origin, srv.base);

  const browser = await launchChromium(t);
  const tab = await browser.open(origin + "/");
  await eventually("the page holds bob (members()) and alice (her own join event)", async () =>
    (await tab.eval("document.body?.dataset.members || ''")) === "alice,bob", 20000);
  assert.equal((await postJSON(srv.base + "/v1/heartbeat", { user: "carol", room: "doc-42" })).status, 200);
  await eventually("carol's join reaches the page", async () =>
    (await tab.eval("document.body?.dataset.members || ''")) === "alice,bob,carol", 20000);
});
