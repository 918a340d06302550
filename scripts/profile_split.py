#!/usr/bin/env python3
"""Split a py-spy profile of the enclave into frontend work and ordering work.

    .venv/bin/python scripts/profile_split.py PROFILE.txt [--us-per-write 199]

PROFILE.txt is py-spy's raw (collapsed-stack) output, as `scripts/bench.py --profile-dir DIR`
records it for the primary's enclave. Each sample is put in one bucket by the first rule
that matches a frame of its stack: first the work a frontend process could do (TLS
handshakes, writing the response through TLS (aiohttp's, or the enclave HTTP server's
`_Session._write_answer`), reading and validating the body, authenticating the caller and
checking the service is open), then the ordering process's (committing the transaction,
signatures, the application handler on the KV store, frames to and from the host), then
the rest of HTTP handling (parsing, the HTTP server's request plumbing, `Node.handle`'s own
lines: route match, admission checks), which is frontend work. What matches nothing is the
event loop and other overhead.
With --us-per-write (the bench's `enclave_us_per_write`), each share is also given in µs.
The last line is one JSON object. See docs/internals.md, "Multi-core frontends".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

PROFILE_BYTES_MAX = 512 * 1024 * 1024
FRONT_FIRST = (
    ("front_tls_handshake", ("do_handshake",)),
    ("front_response_write", ("finish_response", "write_eof", "_writelines", "_write_answer")),
    ("front_body_read_and_validation", ("read_body", "validate_json", "App._context")),
    ("front_authentication", ("Node.authenticate", "service_status", "getpeercert")),
)
ORDER = (
    ("order_commit_tx", ("Node.commit_tx",)),
    ("order_signatures", ("Node.emit_signature",)),
    ("order_app_handler_and_kv", ("App.invoke",)),
    ("order_host_frames", ("Runtime.frame_loop", "Runtime.on_frame", "ControlChannel",
                           "Runtime.flush", "Node.tick", "Node.durable", "_drain_ready")),
)  # fmt: skip
FRONT_LAST = (
    ("front_http_parse_and_dispatch", ("data_received", "RequestHandler", "http1_only",
                                       "handle_http", "Node.handle", "Node._handle",
                                       "_Session.", "RequestReader.")),
)  # fmt: skip
RULES = FRONT_FIRST + ORDER + FRONT_LAST


def bucket(stack: str) -> str:
    for name, patterns in RULES:
        if any(p in stack for p in patterns):
            return name
    return "event_loop_and_other"


def split(path: Path) -> tuple[int, Counter[str]]:
    if path.stat().st_size > PROFILE_BYTES_MAX:
        raise SystemExit(f"{path} is larger than {PROFILE_BYTES_MAX} bytes")
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        counts[bucket(stack)] += int(count_text)
    return total, counts


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="profile_split.py", description=__doc__.split("\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--us-per-write", type=float, default=None, help="enclave CPU per write")
    args = p.parse_args(argv)
    total, counts = split(args.profile)
    if total == 0:
        raise SystemExit("no samples")
    shares = {name: round(100 * n / total, 1) for name, n in counts.most_common()}
    front = sum(n for name, n in counts.items() if name.startswith("front_"))
    order = sum(n for name, n in counts.items() if name.startswith("order_"))
    result: dict[str, object] = {"samples": total, "percent": shares}
    # The event loop's own share is spread over both in proportion (each process has one).
    result["front_share"] = round(front / (front + order), 3)
    result["order_share"] = round(order / (front + order), 3)
    if args.us_per_write:
        result["front_us_per_write"] = round(args.us_per_write * front / (front + order), 1)
        result["order_us_per_write"] = round(args.us_per_write * order / (front + order), 1)
    for name, share in shares.items():
        print(f"{share:5.1f} %  {name}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
