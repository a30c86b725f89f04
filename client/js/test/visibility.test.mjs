// Browser behaviour under Node: a fake document (Page Visibility API), a
// fake window (pagehide) and navigator.sendBeacon, against a real presenced.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Presence } from "../presenced.js";
import { startServer, eventually, getJSON, MiniWebSocket, fakeBrowser } from "./helpers.mjs";

const status = async (base, user) => (await getJSON(base + "/v1/users/" + user)).body;
const memberState = async (base, room, user) => {
  const m = (await getJSON(base + "/v1/rooms/" + room + "/members")).body.members.find((x) => x.user === user);
  return m ? JSON.stringify(m.state ?? null) : undefined;
};

test("hidden page: no heartbeats (the session times out), visible again: back; pagehide sends a leave beacon", async (t) => {
  const { doc, win, beacons } = fakeBrowser(t);
  const srv = await startServer(t, ["--interval", "300ms", "--ttl", "1s", "--leave-delay", "0"]);
  const p = new Presence({ url: srv.base, user: "tab", room: "r", WebSocket: MiniWebSocket });
  p.start();
  t.after(() => p.close({ leave: false }));
  await eventually("online while visible", async () => (await status(srv.base, "tab")).online);
  doc.set("hidden");
  await eventually("the session ends by timeout while hidden", async () => !(await status(srv.base, "tab")).online, 10000);
  doc.set("visible");
  await eventually("online again once visible", async () => (await status(srv.base, "tab")).online);
  win.dispatchEvent(new Event("pagehide"));
  assert.equal(beacons.length, 1);
  assert.equal((await beacons[0]).status, 200);
  assert.equal((await status(srv.base, "tab")).online, false, "the beacon's leave ends the session at once");
});

test("awayWhenHidden marks the session away while hidden and restores the state when visible", async (t) => {
  const { doc } = fakeBrowser(t);
  const srv = await startServer(t, ["--interval", "300ms", "--ttl", "1s", "--leave-delay", "0"]);
  const p = new Presence({ url: srv.base, user: "tab", room: "r", WebSocket: MiniWebSocket, awayWhenHidden: true, state: { device: "web" } });
  p.start();
  t.after(() => p.close({ leave: false }));
  await eventually("state set while visible", async () => (await memberState(srv.base, "r", "tab")) === '{"device":"web"}');
  doc.set("hidden");
  await eventually("away while hidden", async () => (await memberState(srv.base, "r", "tab")) === '{"device":"web","status":"away"}');
  // Hidden with awayWhenHidden keeps heartbeating (the session stays, marked away) past the TTL.
  await eventually("still there after 2 TTLs", async () => { await new Promise((r) => setTimeout(r, 2000)); return (await status(srv.base, "tab")).online; });
  doc.set("visible");
  await eventually("state restored when visible", async () => (await memberState(srv.base, "r", "tab")) === '{"device":"web"}');
  await p.setState({ device: "web", typing: true });
  assert.equal(await memberState(srv.base, "r", "tab"), '{"device":"web","typing":true}');
});
