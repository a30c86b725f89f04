#!/usr/bin/env python3
"""A presenced v2 client (PROTOCOL.md section 3). Standard library only.

usage: client_v2.py HOST PORT TOKEN CLIENT_KEY USER [ROOM] [--conn ID] [--leave]

TOKEN and CLIENT_KEY (base64url, as the backend hands them out) come from
your backend, which derives the key with client_key() below. Sends one
signed heartbeat (or leave) asking for an ack and prints the reply's
statuses. With --conn the item names its connection (PROTOCOL.md section 4);
without it, the session's default connection.
"""
import base64, hashlib, hmac, socket, struct, sys, time

OP_HEARTBEAT, OP_LEAVE = 1, 2
FLAG_ACK, FLAG_CONN = 0x01, 0x04


def client_key(secret: bytes, token: str) -> bytes:
    """Backend side: the key a client signs with, for one token."""
    msg = b"presenced-client-key-v1\n" + token.encode("ascii")
    return hmac.new(secret, msg, hashlib.sha256).digest()


def request_v2(seq: int, ack: bool, ts_ms: int, token: str, key: bytes, items) -> bytes:
    """items: (op, user, room) or (op, user, room, conn) tuples; one token
    serves them all. A conn of "" is the session's default connection; the
    connection flag is set when any item names one."""
    items = [tuple(it) + ("",) * (4 - len(it)) for it in items]
    with_conn = any(conn for _, _, _, conn in items)
    tok = token.encode("ascii")
    b = bytearray(b"P\x02")
    b += bytes([(FLAG_ACK if ack else 0) | (FLAG_CONN if with_conn else 0), len(items)])
    b += struct.pack(">IQ", seq, ts_ms)
    b += bytes([len(tok)]) + tok
    for op, user, room, conn in items:
        u, r, c = user.encode("utf-8"), room.encode("utf-8"), conn.encode("utf-8")
        b += bytes([op, len(u)]) + u + bytes([len(r)]) + r
        if with_conn:
            b += bytes([len(c)]) + c
    mac = hmac.new(key, bytes(b), hashlib.sha256).digest()[:16]
    return bytes(b) + mac


def main():
    argv = sys.argv[1:]
    conn = ""
    if "--conn" in argv:
        i = argv.index("--conn")
        conn = argv[i + 1]
        del argv[i : i + 2]
    args = [a for a in argv if a != "--leave"]
    op = OP_LEAVE if "--leave" in argv else OP_HEARTBEAT
    host, port, token, key_text, user = args[:5]
    room = args[5] if len(args) > 5 else ""
    key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    seq = int(time.time()) & 0xFFFFFFFF
    req = request_v2(seq, True, int(time.time() * 1000), token, key, [(op, user, room, conn)])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(req, (host, int(port)))
    rep = s.recv(1400)
    count = rep[3]
    print("seq", struct.unpack(">I", rep[4:8])[0], "statuses", list(rep[8 : 8 + count]))


if __name__ == "__main__":
    main()
