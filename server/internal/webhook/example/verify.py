#!/usr/bin/env python3
"""Verify a presenced webhook batch (README "Webhooks").

Usage: verify.py SECRET SIGNATURE_HEADER < body
Exits 0 when the signature verifies, 1 when it does not.
"""
import hashlib
import hmac
import sys
import time


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """True when header is X-Presenced-Signature of body, made with secret
    within tolerance seconds of now."""
    t, sigs = None, []
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t" and v.isdigit():
            t = int(v)
        elif k == "v1":
            sigs.append(v)
    if t is None or not sigs or abs(time.time() - t) > tolerance:
        return False
    want = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(want, s) for s in sigs)


if __name__ == "__main__":
    ok = verify(sys.argv[1].encode(), sys.argv[2], sys.stdin.buffer.read())
    sys.exit(0 if ok else 1)
