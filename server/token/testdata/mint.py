#!/usr/bin/env python3
"""Mint a presenced token (see PROTOCOL.md). Standard library only.

usage: mint.py SECRET_FILE USER [ROOM] [--exp UNIX | --valid-for SECONDS] [--client-key]

The first key in SECRET_FILE ("<kid> <secret>" lines) signs. With ROOM the
token is bound to that room (scope "r"); without it, valid in any room ("u").
With --client-key, a second line gives the token's client key for signed
(v2) datagrams, base64url without padding (PROTOCOL.md section 3).
"""
import argparse, base64, hashlib, hmac, re, time


def mint(kid: str, secret: bytes, user: str, room: str, exp: int) -> str:
    scope = "r" if room else "u"
    msg = "\n".join(["presenced-token-v1", kid, str(exp), scope, user, room])
    mac = hmac.new(secret, msg.encode("utf-8"), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
    return f"{kid}.{exp}.{scope}.{sig}"


def client_key(secret: bytes, token: str) -> str:
    msg = b"presenced-client-key-v1\n" + token.encode("ascii")
    mac = hmac.new(secret, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def first_key(path: str):
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            line = line.strip(b" \t\r")
            if line and not line.startswith(b"#"):
                kid, secret = re.split(rb"[ \t]", line, maxsplit=1)
                return kid.decode("ascii"), secret.strip(b" \t\r")
    raise SystemExit("no key in " + path)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("secret_file")
    p.add_argument("user")
    p.add_argument("room", nargs="?", default="")
    p.add_argument("--exp", type=int)
    p.add_argument("--valid-for", type=int, default=3600)
    p.add_argument("--client-key", action="store_true")
    a = p.parse_args()
    kid, secret = first_key(a.secret_file)
    exp = a.exp if a.exp is not None else int(time.time()) + a.valid_for
    token = mint(kid, secret, a.user, a.room, exp)
    print(token)
    if a.client_key:
        print(client_key(secret, token))
