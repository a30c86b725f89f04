// Test helpers: a presenced binary on a free port, a minimal RFC 6455
// client (Node 20 has no global WebSocket), and bounded polling.
import { spawn, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "../../..");

let built;
/** The presenced binary: $PRESENCED_BIN, else built once into a temp dir. */
export function presencedBin() {
  if (process.env.PRESENCED_BIN) return process.env.PRESENCED_BIN;
  if (!built) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presenced-js-"));
    built = path.join(dir, "presenced");
    execFileSync("go", ["build", "-o", built, "."], { cwd: repoRoot, stdio: "inherit" });
  }
  return built;
}

/** Start presenced with extra flags; resolves {base, stop}. */
export async function startServer(t, flags = []) {
  const proc = spawn(presencedBin(), ["serve", "--http-addr", "127.0.0.1:0", "--udp-addr", "", "--data-dir", "",
    "--heartbeat-min-gap", "0", ...flags], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("presenced did not start within 20 s:\n" + log)), 20000);
    proc.stderr.on("data", (d) => {
      log += d;
      const m = /presenced ready.*?http=(\S+)/.exec(log);
      if (m) { clearTimeout(timer); resolve("http://" + m[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error("presenced exited " + code + ":\n" + log)); });
  });
  const stop = () => new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once("exit", resolve);
    proc.kill("SIGTERM");
  });
  t.after(stop);
  return { base, stop, log: () => log };
}

/** Poll f until it returns a truthy value or ms pass. */
export async function eventually(what, f, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out after " + ms + " ms waiting for " + what);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function getJSON(url) {
  const r = await fetch(url);
  return { status: r.status, body: await r.json() };
}

export async function postJSON(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

export class FakeDocument extends EventTarget {
  visibilityState = "visible";
  set(v) { this.visibilityState = v; this.dispatchEvent(new Event("visibilitychange")); }
}

/**
 * fakeBrowser installs, until t ends, a fake document (Page Visibility API),
 * a fake window (pagehide, pageshow) and navigator.sendBeacon, which POSTs
 * with fetch (to a real server) and records {url, body} in beacons.
 */
export function fakeBrowser(t) {
  const doc = new FakeDocument();
  const win = new EventTarget();
  const beacons = [];
  const sent = [];
  const saved = { document: globalThis.document, addEventListener: globalThis.addEventListener, removeEventListener: globalThis.removeEventListener, navigator: Object.getOwnPropertyDescriptor(globalThis, "navigator") };
  globalThis.document = doc;
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  Object.defineProperty(globalThis, "navigator", { configurable: true, value: {
    sendBeacon(url, body) { beacons.push(fetch(url, { method: "POST", body, headers: { "Content-Type": "text/plain" } })); sent.push({ url, body }); return true; },
  } });
  t.after(() => {
    globalThis.document = saved.document;
    globalThis.addEventListener = saved.addEventListener;
    globalThis.removeEventListener = saved.removeEventListener;
    if (saved.navigator) Object.defineProperty(globalThis, "navigator", saved.navigator); else delete globalThis.navigator;
  });
  return { doc, win, beacons, sent };
}

/**
 * MiniWebSocket: the browser WebSocket API subset presenced.js uses
 * (onopen, onmessage, onclose, onerror, send, close, readyState) over
 * node:net, text frames only. Answers pings; no extensions.
 */
export class MiniWebSocket {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    const u = new URL(url);
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    const key = randomBytes(16).toString("base64");
    const accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    this.sock = net.connect(Number(u.port), u.hostname);
    this.buf = Buffer.alloc(0);
    this.frag = [];
    let handshook = false;
    this.sock.on("connect", () => {
      this.sock.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    this.sock.on("data", (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      if (!handshook) {
        const end = this.buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = this.buf.subarray(0, end).toString();
        this.buf = this.buf.subarray(end + 4);
        if (!/^HTTP\/1\.1 101/.test(head) || !head.includes(accept)) {
          this._fail(new Error("handshake refused: " + head.split("\r\n")[0]));
          return;
        }
        handshook = true;
        this.readyState = 1;
        this.onopen?.({});
      }
      this._frames();
    });
    this.sock.on("error", (e) => this._fail(e));
    this.sock.on("close", () => this._closed(1006, ""));
  }
  _fail(e) { this.onerror?.(e); this.sock.destroy(); this._closed(1006, String(e.message)); }
  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  _frames() {
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const op = b[0] & 0x0f, fin = (b[0] & 0x80) !== 0;
      let len = b[1] & 0x7f, off = 2;
      if (len === 126) { if (b.length < 4) return; len = b.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (b.length < 10) return; len = Number(b.readBigUInt64BE(2)); off = 10; }
      if (b.length < off + len) return;
      const payload = b.subarray(off, off + len);
      this.buf = b.subarray(off + len);
      if (op === 0x9) this._write(0xA, payload);
      else if (op === 0x8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        if (this.readyState === 1) this._write(0x8, payload.subarray(0, 2));
        this.readyState = 2;
        this.sock.end();
        this._closed(code, payload.subarray(2).toString());
      } else if (op === 0x1 || op === 0x0) {
        this.frag.push(Buffer.from(payload));
        if (fin) { const data = Buffer.concat(this.frag).toString(); this.frag = []; this.onmessage?.({ data }); }
      }
    }
  }
  _write(op, payload) {
    const p = Buffer.from(payload);
    const mask = randomBytes(4);
    let head;
    if (p.length < 126) head = Buffer.from([0x80 | op, 0x80 | p.length]);
    else if (p.length < 65536) { head = Buffer.alloc(4); head[0] = 0x80 | op; head[1] = 0x80 | 126; head.writeUInt16BE(p.length, 2); }
    else { head = Buffer.alloc(10); head[0] = 0x80 | op; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(p.length), 2); }
    for (let i = 0; i < p.length; i++) p[i] ^= mask[i & 3];
    this.sock.write(Buffer.concat([head, mask, p]));
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("socket not open");
    this._write(0x1, Buffer.from(text));
  }
  close(code = 1000) {
    if (this.readyState >= 2) return;
    const p = Buffer.alloc(2); p.writeUInt16BE(code, 0);
    if (this.readyState === 1) this._write(0x8, p);
    this.readyState = 2;
    this.sock.end();
    setTimeout(() => this.sock.destroy(), 1000).unref();
  }
}

/** A TCP proxy to target whose connections the test can cut. */
export async function cuttableProxy(t, targetBase) {
  const target = new URL(targetBase);
  const conns = new Set();
  const srv = net.createServer((c) => {
    const up = net.connect(Number(target.port), target.hostname);
    conns.add(c); conns.add(up);
    c.pipe(up); up.pipe(c);
    const done = () => { c.destroy(); up.destroy(); conns.delete(c); conns.delete(up); };
    c.on("error", done); up.on("error", done); c.on("close", done); up.on("close", done);
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => { for (const c of conns) c.destroy(); srv.close(r); }));
  return {
    base: "http://127.0.0.1:" + srv.address().port,
    cut() { for (const c of conns) c.destroy(); conns.clear(); },
  };
}

/** The Chromium binary: $CHROMIUM, else chromium on PATH. */
export function chromiumBin() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser"]) if (fs.existsSync(p)) return p;
  throw new Error("chromium not found: install the Debian package chromium (.ci/test.sh does) or set CHROMIUM");
}

/**
 * Headless Chromium driven over the DevTools protocol (a tiny client on
 * MiniWebSocket). Resolves {open(url) -> page, close}; page has
 * eval(expr), screenshot() (PNG Buffer) and close().
 */
export async function launchChromium(t) {
  // The profile and Chromium's own temporary files (its singleton socket) in one dir, removed at close.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presenced-chromium-"));
  const profile = path.join(dir, "profile");
  fs.mkdirSync(path.join(dir, "tmp"));
  const proc = spawn(chromiumBin(), ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
    "--user-data-dir=" + profile, "--remote-debugging-port=0", "--window-size=1280,800", "about:blank"],
  { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, TMPDIR: path.join(dir, "tmp") } });
  let log = "";
  const wsURL = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("chromium did not start within 30 s:\n" + log)), 30000);
    proc.stderr.on("data", (d) => {
      log += d;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error("chromium exited " + code + ":\n" + log)); });
  });
  const ws = new MiniWebSocket(wsURL);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let id = 0;
  const waiting = new Map();
  ws.onmessage = ({ data }) => {
    const m = JSON.parse(data);
    const w = waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id);
    if (m.error) w.reject(new Error(JSON.stringify(m.error))); else w.resolve(m.result);
  };
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const msg = { id: ++id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    waiting.set(msg.id, { resolve, reject });
    ws.send(JSON.stringify(msg));
  });
  let closing;
  const close = () => closing ??= (async () => {
    try { ws.close(); } catch { /* gone */ }
    // SIGTERM: Chromium shuts down with its helper processes (SIGKILL leaves
    // them running a while, writing into the profile); SIGKILL if it hangs.
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      const hung = setTimeout(() => proc.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(hung);
    }
    // Renderers, zygotes and utilities carry --user-data-dir=<profile>: wait for them, then kill stragglers.
    const helpers = () => {
      const out = [];
      let pids = [];
      try { pids = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)); } catch { /* no /proc: nothing to wait for */ }
      for (const pid of pids) {
        try { if (fs.readFileSync(`/proc/${pid}/cmdline`, "latin1").includes(profile)) out.push(Number(pid)); } catch { /* exited */ }
      }
      return out;
    };
    const deadline = Date.now() + 10000;
    while (helpers().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const pid of helpers()) { try { process.kill(pid, "SIGKILL"); } catch { /* exited */ } }
    // A helper exiting may still flush a file into the profile: retry for
    // up to 10 s, then leave the (temporary) folder rather than fail the test.
    for (const until = Date.now() + 10000; ;) {
      try { fs.rmSync(dir, { recursive: true, force: true }); break; } catch (err) {
        if (Date.now() > until) { console.warn(`cannot remove ${dir}: ${err.message}`); break; }
        for (const pid of helpers()) { try { process.kill(pid, "SIGKILL"); } catch { /* exited */ } }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  })();
  t.after(close);
  return {
    async open(url) {
      const { targetId } = await send("Target.createTarget", { url, newWindow: true });
      const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
      await send("Runtime.enable", {}, sessionId);
      return {
        async eval(expression) {
          const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true }, sessionId);
          if (r.exceptionDetails) throw new Error("page error: " + JSON.stringify(r.exceptionDetails));
          return r.result.value;
        },
        async screenshot() {
          const r = await send("Page.captureScreenshot", { format: "png" }, sessionId);
          return Buffer.from(r.data, "base64");
        },
        close: () => send("Target.closeTarget", { targetId }),
      };
    },
    close,
  };
}
