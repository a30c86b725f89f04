// presenced.js: a dependency-free ES module for browsers and Node 20+.
//
// Heartbeats (and state) over the WebSocket GET /v1/ws, with HTTP
// (POST /v1/heartbeat) as the fallback while the socket is down; room
// subscriptions that resume from the last event id after a reconnect;
// reconnects with capped exponential backoff and jitter. The heartbeat
// period follows the server's interval_ms. In a browser it heartbeats only
// while the page is visible (Page Visibility API), can mark the session
// {"status":"away"} while hidden, and sends a leave with navigator.sendBeacon
// when the page goes away.
//
// Each tab is its own connection of the session: a random id kept in
// sessionStorage (so it survives a reload, and the reload within
// --leave-delay leaves no trace) and sent as "conn" with every heartbeat
// and leave, so closing one of a user's tabs leaves the others present.
//
//   import { Presence } from "./presenced.js";
//   const p = new Presence({ url: "https://presence.example.com", user: "alice",
//                            room: "doc-42", token: () => fetchToken() });
//   p.subscribe("doc-42", (ev) => console.log(ev.type, ev.user));
//   p.start();
//
// Node 20 has no global WebSocket: pass one (e.g. the "ws" package) as the
// WebSocket option, or the module heartbeats over HTTP only.

const AUTH_ERRORS = ["token has expired", "token is malformed", "token key id is unknown", "token is required", "token is bound to another room"];

/** Compare two event ids "<ms>-<seq>": negative, zero or positive. */
export function compareIds(a, b) {
  const [am, as = "0"] = String(a).split("-");
  const [bm, bs = "0"] = String(b).split("-");
  const d = BigInt(am) - BigInt(bm);
  if (d !== 0n) return d < 0n ? -1 : 1;
  const e = BigInt(as) - BigInt(bs);
  return e === 0n ? 0 : e < 0n ? -1 : 1;
}

const CONN_KEY = "presenced.conn";
let tabConn; // this page's connection id, shared by its Presence objects
let tabStore; // the sessionStorage it came from and goes back to

/** A random connection id: 16 base64url characters (96 bits). */
export function newConnId() {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_");
}

/** Whether s is a connection id the server takes: 1..64 bytes of UTF-8, no control characters. */
export function validConnId(s) {
  return typeof s === "string" && s.length > 0 && new TextEncoder().encode(s).length <= 64 &&
    !/[\u0000-\u001f\u007f]/.test(s) && s.isWellFormed?.() !== false;
}

function storage() {
  try { return globalThis.sessionStorage || undefined; } catch { return undefined; } // blocked storage throws
}

/**
 * This tab's connection id. It is taken out of sessionStorage when the page
 * loads and put back when the page goes away (pagehide): a reload finds it,
 * while a duplicated tab, whose sessionStorage is a copy taken while the
 * page lives, does not, and makes up its own.
 */
export function tabConnId() {
  if (tabConn) return tabConn;
  const st = tabStore = storage();
  let id;
  try { id = st?.getItem(CONN_KEY); st?.removeItem(CONN_KEY); } catch { /* storage unavailable */ }
  tabConn = validConnId(id) ? id : newConnId();
  return tabConn;
}

function keepConnId(id) {
  try { tabStore?.setItem(CONN_KEY, id); } catch { /* storage full or unavailable: a new id after the reload */ }
}

function takeConnId() {
  try { tabStore?.removeItem(CONN_KEY); } catch { /* storage unavailable */ }
}

/** The backoff before reconnect attempt n (0-based): 250 ms doubling to maxMs, +-20 % jitter. */
export function backoff(n, maxMs = 30000, random = Math.random) {
  const base = Math.min(maxMs, 250 * 2 ** Math.min(n, 20));
  return Math.round(base * (0.8 + 0.4 * random()));
}

export class Presence {
  /**
   * @param {object} o
   * @param {string} o.url            the server's HTTP base URL (http[s]://host:port)
   * @param {string} [o.user]         the user to heartbeat for (omit to only subscribe)
   * @param {string} [o.room]         the room ("" or omitted: online only)
   * @param {string} [o.conn]         the connection id (default: this tab's, see tabConnId)
   * @param {string|function} [o.token] a token, or a (possibly async) function returning a fresh one
   * @param {object} [o.state]        the session state to send (needs server support)
   * @param {boolean} [o.awayWhenHidden] browser: set state {"status":"away"} while hidden
   * @param {boolean} [o.heartbeatWhenHidden] browser: keep heartbeating while hidden (default false)
   * @param {string} [o.accessToken]  API token (subscriptions to all rooms with --api-token-file)
   * @param {Function} [o.WebSocket]  WebSocket constructor (default globalThis.WebSocket)
   * @param {Function} [o.fetch]      fetch (default globalThis.fetch)
   * @param {number} [o.maxBackoffMs] reconnect backoff cap (default 30000)
   * @param {Function} [o.onStatus]   called with {transport:"ws"|"http"|"none", connected, interval_ms, ttl_ms}
   * @param {Function} [o.onError]    called with an Error for answers the server refused
   */
  constructor(o) {
    if (!o || !o.url) throw new Error("cannot create Presence: url is required");
    this.url = o.url.replace(/\/+$/, "");
    this.user = o.user;
    this.room = o.room || "";
    if (o.conn !== undefined && !validConnId(o.conn)) throw new Error("cannot create Presence: conn must be 1 to 64 bytes of UTF-8 without control characters");
    this.conn = o.conn ?? tabConnId();
    this.tokenSrc = o.token;
    this.token = typeof o.token === "string" ? o.token : undefined;
    this.state = o.state;
    this.awayWhenHidden = !!o.awayWhenHidden;
    this.heartbeatWhenHidden = !!o.heartbeatWhenHidden;
    this.accessToken = o.accessToken;
    this.WS = o.WebSocket || globalThis.WebSocket;
    this.fetch = o.fetch || globalThis.fetch?.bind(globalThis);
    this.maxBackoffMs = o.maxBackoffMs ?? 30000;
    this.onStatus = o.onStatus || (() => {});
    this.onError = o.onError || (() => {});
    this.intervalMs = 60000;
    this.ttlMs = 150000;
    this.subs = new Map(); // key (room or "\u0000all") -> {room, handlers:Set, lastId}
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.nextRef = 1;
    this.ws = null;
    this.wsOpen = false;
    this.attempt = 0;
    this.running = false;
    this.hidden = false;
    this.hbTimer = null;
    this.reconnectTimer = null;
    this.transport = "none";
    this._onVisibility = () => this._visibilityChanged();
    this._onPageHide = () => this._pageHide();
    this._onPageShow = () => { if (this.conn === tabConn) takeConnId(); };
  }

  /** Start heartbeating (when a user is set) and keep the subscriptions open. */
  start() {
    if (this.running) return this;
    this.running = true;
    const doc = globalThis.document;
    if (doc && typeof doc.addEventListener === "function") {
      this.hidden = doc.visibilityState === "hidden";
      doc.addEventListener("visibilitychange", this._onVisibility);
      globalThis.addEventListener?.("pagehide", this._onPageHide);
      globalThis.addEventListener?.("pageshow", this._onPageShow);
    }
    this._connect();
    // With a socket coming, the first heartbeat goes over it once open (after
    // the subscriptions, so they see it); HTTP if it is not open within 3 s.
    this._schedule(typeof this.WS === "function" ? 3000 : 0);
    return this;
  }

  /** Stop: leave the room (when heartbeating), close the socket, stop timers. */
  async close({ leave = true } = {}) {
    if (!this.running) return;
    if (leave && this.user !== undefined) {
      try { await this.leave(); } catch { /* best effort */ }
    }
    this.running = false;
    clearTimeout(this.hbTimer);
    clearTimeout(this.reconnectTimer);
    const doc = globalThis.document;
    if (doc && typeof doc.removeEventListener === "function") {
      doc.removeEventListener("visibilitychange", this._onVisibility);
      globalThis.removeEventListener?.("pagehide", this._onPageHide);
      globalThis.removeEventListener?.("pageshow", this._onPageShow);
    }
    if (this.ws) { try { this.ws.close(1000); } catch { /* closed */ } }
    this._failPending(new Error("closed"));
  }

  /** Set the session state (a JSON object, or null to clear) and send it now. */
  setState(state) {
    this.state = state;
    if (this.running && this.user !== undefined) return this.heartbeat();
    return Promise.resolve();
  }

  /**
   * Subscribe to a room's events (room undefined or null: all rooms). The
   * handler gets each event object once, in order, including "reset"
   * (re-read the members then). Returns a function that unsubscribes.
   */
  subscribe(room, handler, { since } = {}) {
    const key = room == null ? "\u0000all" : String(room);
    let s = this.subs.get(key);
    if (!s) {
      s = { room: room == null ? undefined : String(room), handlers: new Set(), lastId: since };
      this.subs.set(key, s);
      if (this.wsOpen) this._sendSubscribe(s);
    }
    s.handlers.add(handler);
    return () => {
      s.handlers.delete(handler);
      if (s.handlers.size === 0) {
        this.subs.delete(key);
        if (this.wsOpen) this._request({ op: "unsubscribe", room: s.room }).catch(() => {});
      }
    };
  }

  /** Send one heartbeat now, for this tab's connection; resolves with the answer. */
  async heartbeat() {
    const body = { user: this.user, room: this.room, conn: this.conn, token: await this._token() };
    const away = this.hidden && this.awayWhenHidden;
    const state = this._effectiveState();
    if (state !== undefined) body.state = state;
    let ans;
    try {
      ans = this.wsOpen ? await this._request({ op: "heartbeat", ...body }) : await this._http("/v1/heartbeat", body);
    } catch (e) {
      if (AUTH_ERRORS.some((m) => String(e.message).includes(m)) && typeof this.tokenSrc === "function") {
        this.token = undefined; // ask for a fresh one next time
      }
      throw e;
    }
    this.beaten = true;
    this.awaySent = away;
    if (ans.interval_ms > 0) this.intervalMs = ans.interval_ms;
    if (ans.ttl_ms > 0) this.ttlMs = ans.ttl_ms;
    this._status();
    return ans;
  }

  /** Leave the room now with this tab's connection (over the socket, else HTTP); the user's other tabs stay. */
  async leave() {
    const body = { user: this.user, room: this.room, conn: this.conn, token: await this._token() };
    return this.wsOpen ? this._request({ op: "leave", ...body }) : this._http("/v1/leave", body);
  }

  // --- internals ---

  // _effectiveState is the state to send: away while hidden (with
  // awayWhenHidden), the app's own state again (or a clear) once visible.
  _effectiveState() {
    if (this.hidden && this.awayWhenHidden) return { ...(this.state || {}), status: "away" };
    if (this.awaySent) return this.state ?? null;
    return this.state;
  }

  async _token() {
    if (this.token !== undefined) return this.token;
    if (typeof this.tokenSrc === "function") this.token = await this.tokenSrc();
    return this.token;
  }

  _status() {
    this.onStatus({ transport: this.transport, connected: this.wsOpen, interval_ms: this.intervalMs, ttl_ms: this.ttlMs });
  }

  _schedule(ms) {
    clearTimeout(this.hbTimer);
    if (!this.running || this.user === undefined) return;
    this.hbTimer = setTimeout(() => this._beat(), ms);
  }

  async _beat() {
    if (!this.running) return;
    if (this.hidden && !this.heartbeatWhenHidden && !this.awayWhenHidden) return; // resumes on visible
    try {
      await this.heartbeat();
      this._schedule(this.intervalMs);
    } catch (e) {
      this.onError(e);
      // Retry well within the TTL: a third of the interval, at least 1 s.
      this._schedule(Math.max(1000, Math.min(this.intervalMs / 3, this.ttlMs / 4)));
    }
  }

  _visibilityChanged() {
    const hidden = globalThis.document.visibilityState === "hidden";
    if (hidden === this.hidden) return;
    this.hidden = hidden;
    if (!this.running || this.user === undefined) return;
    if (hidden && !this.awayWhenHidden && !this.heartbeatWhenHidden) {
      clearTimeout(this.hbTimer); // the session lives on for ttl; a long absence ends it
      return;
    }
    this._schedule(0); // visible again, or away to announce
  }

  _pageHide() {
    if (this.conn === tabConn) keepConnId(this.conn); // for a reload of this tab
    if (!this.running || this.user === undefined || this.token === undefined && typeof this.tokenSrc === "function") return;
    const body = JSON.stringify({ user: this.user, room: this.room, conn: this.conn, token: this.token });
    // text/plain needs no CORS preflight; the server reads the JSON body whatever its type.
    globalThis.navigator?.sendBeacon?.(this.url + "/v1/leave", body);
  }

  _wsURL() {
    let u = this.url.replace(/^http/, "ws") + "/v1/ws";
    if (this.accessToken) u += "?access_token=" + encodeURIComponent(this.accessToken);
    return u;
  }

  _connect() {
    if (!this.running) return;
    if (typeof this.WS !== "function") { // no WebSocket: HTTP only
      this.transport = "http";
      this._status();
      return;
    }
    let ws;
    try {
      ws = new this.WS(this._wsURL());
    } catch (e) {
      this.onError(e);
      this._reconnectLater();
      return;
    }
    this.ws = ws;
    ws.onopen = async () => {
      if (this.ws !== ws) return;
      this.wsOpen = true;
      this.attempt = 0;
      this.transport = "ws";
      this._status();
      // Subscriptions first (they then see this client's own join), the
      // session next; a room subscription that needs the session (the
      // server has --api-token-file) is sent again once it exists.
      const subs = [...this.subs.values()];
      const results = subs.map((s) => this._sendSubscribe(s, true));
      clearTimeout(this.hbTimer);
      if (this.user !== undefined) await this._beat();
      (await Promise.all(results)).forEach((err, i) => {
        if (!err) return;
        if (/needs a session/.test(err.message) && this.ws === ws) this._sendSubscribe(subs[i]);
        else this.onError(err);
      });
    };
    ws.onmessage = (m) => this._message(typeof m.data === "string" ? m.data : String(m.data));
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.ws !== ws) return;
      const was = this.wsOpen;
      this.ws = null;
      this.wsOpen = false;
      this.transport = typeof this.WS === "function" ? "http" : "none";
      this._failPending(new Error("socket closed"));
      this._status();
      if (was || !this.beaten) this._schedule(0); // heartbeat over HTTP meanwhile
      this._reconnectLater();
    };
  }

  _reconnectLater() {
    if (!this.running) return;
    clearTimeout(this.reconnectTimer);
    this.transport = "http";
    this.reconnectTimer = setTimeout(() => this._connect(), backoff(this.attempt++, this.maxBackoffMs));
  }

  // _sendSubscribe subscribes s from its last id; with quiet, a refusal is
  // returned (the promise resolves to the Error, or null) instead of reported.
  _sendSubscribe(s, quiet = false) {
    const req = { op: "subscribe" };
    if (s.room !== undefined) req.room = s.room;
    if (s.lastId) req.since = s.lastId;
    return this._request(req).then(() => null, (e) => {
      if (!quiet) this.onError(e);
      return e;
    });
  }

  _request(req) {
    const ref = String(this.nextRef++);
    const ws = this.ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new Error("no answer to " + req.op + " within 10 s"));
        if (this.ws === ws && ws) { try { ws.close(4000, "no answer"); } catch { /* closed */ } }
      }, 10000);
      this.pending.set(ref, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...req, ref }));
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(ref);
        reject(e);
      }
    });
  }

  _failPending(err) {
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
  }

  _message(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (m.ref !== undefined && (m.ok || m.error !== undefined)) {
      const p = this.pending.get(String(m.ref));
      if (!p) return;
      this.pending.delete(String(m.ref));
      clearTimeout(p.timer);
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(m);
      return;
    }
    if (m.error !== undefined) { this.onError(new Error(m.error)); return; }
    if (!m.type || !m.id) return;
    // An event: to every subscription it belongs to, once each (a room
    // subscription and an all-rooms one both receive it). A reset goes to
    // every subscription once: each re-reads what it shows.
    for (const s of this.subs.values()) {
      if (m.type === "reset") {
        if (s.lastReset === m.id) continue;
        s.lastReset = m.id;
        if (!s.lastId || compareIds(m.id, s.lastId) > 0) s.lastId = m.id;
      } else {
        if (s.room !== undefined && s.room !== m.room) continue;
        if (s.lastId && compareIds(m.id, s.lastId) <= 0) continue; // seen
        s.lastId = m.id;
      }
      for (const h of s.handlers) {
        try { h(m); } catch (e) { this.onError(e); }
      }
    }
  }

  async _http(path, body) {
    if (typeof this.fetch !== "function") throw new Error("cannot send " + path + ": no fetch and no socket");
    const r = await this.fetch(this.url + path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let j = {};
    try { j = await r.json(); } catch { /* not JSON */ }
    if (!r.ok) throw new Error(j.error || "HTTP " + r.status);
    return j;
  }
}

/**
 * Load a room's members over HTTP (GET /v1/rooms/{room}/members, every page).
 * Returns [{user, last_seen, ...}].
 */
export async function members(url, room, { fetch = globalThis.fetch, accessToken } = {}) {
  const out = [];
  let cursor = null;
  const headers = accessToken ? { Authorization: "Bearer " + accessToken } : {};
  do {
    let u = url.replace(/\/+$/, "") + "/v1/rooms/" + encodeURIComponent(room) + "/members?limit=1000";
    if (cursor) u += "&cursor=" + encodeURIComponent(cursor);
    const r = await fetch(u, { headers });
    if (!r.ok) throw new Error("cannot list members of " + room + ": HTTP " + r.status);
    const j = await r.json();
    out.push(...j.members);
    cursor = j.next_cursor;
  } while (cursor);
  return out;
}
