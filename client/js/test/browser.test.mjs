// Headless Chromium: the demo page shows a second tab's join in the first
// tab, and the /ui live page renders (screenshot saved as a CI artifact).
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startServer, eventually, postJSON, launchChromium, repoRoot } from "./helpers.mjs";

const artifacts = process.env.CI_ARTIFACTS || path.join(repoRoot, "artifacts");

test("demo page: a second tab's join appears in the first tab, and its close leaves", async (t) => {
  const srv = await startServer(t, ["--leave-delay", "0"]);
  const browser = await launchChromium(t);
  const a = await browser.open(`${srv.base}/ui/demo?user=alice&room=lobby`);
  await eventually("alice's tab shows alice", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice", 20000);
  const b = await browser.open(`${srv.base}/ui/demo?user=bob&room=lobby`);
  await eventually("bob's join shown in alice's tab", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice,bob", 20000);
  assert.match(await a.eval("document.getElementById('status').textContent"), /alice via ws/);
  // Closing bob's tab: the pagehide beacon (or the socket's disconnect) ends bob's session.
  await b.close();
  await eventually("bob gone from alice's tab", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice", 20000);
});

test("/ui: stats, top rooms, members and the live feed render; guarded by --api-token-file", async (t) => {
  const tok = "ui-token-0123456789abcdef";
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presenced-ui-test-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, "tokens"), tok + "\n");
  const srv = await startServer(t, ["--leave-delay", "0", "--api-token-file", path.join(dir, "tokens")]);
  assert.equal((await fetch(srv.base + "/ui")).status, 401);
  assert.equal((await fetch(srv.base + "/ui?access_token=" + tok)).status, 200);
  for (const [u, r] of [["ann", "kitchen"], ["ben", "kitchen"], ["cy", "kitchen"], ["dee", "garden"]]) {
    assert.equal((await postJSON(srv.base + "/v1/heartbeat", { user: u, room: r })).status, 200);
  }
  const browser = await launchChromium(t);
  const page = await browser.open(`${srv.base}/ui?access_token=${tok}&room=kitchen`);
  await eventually("the page loaded its data", async () => (await page.eval("document.body?.dataset.loaded || ''")) === "1", 20000);
  assert.equal(await page.eval("document.getElementById('online_users').textContent"), "4");
  assert.equal(await page.eval("[...document.querySelectorAll('#top tr')].map(tr => tr.dataset.room + '=' + tr.cells[1].textContent).join(',')"), "kitchen=3,garden=1");
  assert.equal(await page.eval("[...document.querySelectorAll('#members tr')].map(tr => tr.dataset.user).sort().join(',')"), "ann,ben,cy");
  await eventually("the feed is live", async () => (await page.eval("document.getElementById('conn').textContent")) === "live", 20000);
  await postJSON(srv.base + "/v1/heartbeat", { user: "eve", room: "kitchen" });
  await eventually("eve's join in the feed and the members", async () =>
    (await page.eval("document.getElementById('feed').textContent")).includes("join eve @kitchen") &&
    (await page.eval("[...document.querySelectorAll('#members tr')].map(tr => tr.dataset.user).sort().join(',')")) === "ann,ben,cy,eve", 20000);
  fs.mkdirSync(artifacts, { recursive: true });
  const png = await page.screenshot();
  assert.ok(png.length > 1000 && png.subarray(1, 4).toString() === "PNG");
  fs.writeFileSync(path.join(artifacts, "ui.png"), png);
});
