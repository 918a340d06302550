"""A tap on a node's control channel (host <-> enclave), for confidentiality tests.

Two modes, both run as programs:

- `control_tap.py --host-config node.json --tap-dir DIR` runs the real host (`host.main.Host`)
  with this file as its enclave program;
- the host then starts `control_tap.py --tap-dir DIR --control-fd N`, which starts the real
  enclave (`python -m charter.enclave_app.main`) on a fresh socketpair and relays every control frame
  between the two unchanged, fds included, appending each frame's bytes to
  `DIR/host_to_enclave.bin` or `DIR/enclave_to_host.bin`.

Frames are u32 big-endian length-prefixed (enclave_app/interface/frames.py). Passed fds follow the
channel's own rule: the fds received with a chunk belong to the frame holding the chunk's last
byte, and a frame with fds is forwarded alone in one sendmsg, so the enclave sees them exactly
as the host sent them. The tap changes nothing the two processes do; it only writes down what
an untrusted host could see on that channel.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

_LEN = struct.Struct(">I")
RECV_BYTES = 1 << 20
FDS_MAX = 16
FRAME_BYTES_MAX = 65 * 1024 * 1024


def _pump(src: socket.socket, dst: socket.socket, capture: Path) -> None:
    buf = bytearray()
    pending_fds: list[int] = []
    with capture.open("ab") as out:
        while True:
            try:
                data, anc, _, _ = src.recvmsg(RECV_BYTES, socket.CMSG_SPACE(FDS_MAX * 4))
            except OSError:
                data, anc = b"", []
            if not data:
                break
            fds: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                    fds.extend(arr)
            buf += data
            frames: list[tuple[bytes, list[int]]] = []
            while len(buf) >= _LEN.size:
                (length,) = _LEN.unpack_from(buf)
                assert length <= FRAME_BYTES_MAX, "the tap lost the framing"
                if len(buf) < _LEN.size + length:
                    break
                frame = bytes(buf[: _LEN.size + length])
                del buf[: _LEN.size + length]
                frames.append((frame, pending_fds))
                pending_fds = []
            if fds:
                if buf:  # the chunk ended inside a frame still being read
                    pending_fds = fds
                else:
                    frames[-1] = (frames[-1][0], frames[-1][1] + fds)
            for frame, frame_fds in frames:
                out.write(frame)
                out.flush()
                if frame_fds:
                    dst.sendmsg(
                        [frame],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", frame_fds))],
                    )
                    for fd in frame_fds:
                        os.close(fd)
                else:
                    dst.sendall(frame)
    dst.shutdown(socket.SHUT_WR)


def run_enclave(control_fd: int, tap_dir: Path) -> int:
    tap_dir.mkdir(parents=True, exist_ok=True)
    host_side = socket.socket(fileno=control_fd)
    host_side.setblocking(True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "charter.enclave_app.main", "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    threads = [
        threading.Thread(
            target=_pump, args=(host_side, ours, tap_dir / "host_to_enclave.bin"), daemon=True
        ),
        threading.Thread(
            target=_pump, args=(ours, host_side, tap_dir / "enclave_to_host.bin"), daemon=True
        ),
    ]
    for t in threads:
        t.start()
    code = proc.wait()
    for t in threads:
        t.join(timeout=2)
    return code


def run_host(config_path: str, tap_dir: Path) -> int:
    from charter.enclave_app.interface import load_config
    from charter.host.main import Host, setup_logging

    config = load_config(config_path)
    config.workspace.mkdir(parents=True, exist_ok=True)
    setup_logging(config.workspace)
    argv = [sys.executable, str(Path(__file__).resolve()), "--tap-dir", str(tap_dir)]
    return asyncio.run(Host(config, enclave_argv=argv).run())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tap-dir", type=Path, required=True)
    parser.add_argument("--host-config")
    parser.add_argument("--control-fd", type=int)
    args = parser.parse_args()
    if args.host_config:
        return run_host(args.host_config, args.tap_dir)
    assert args.control_fd is not None
    return run_enclave(args.control_fd, args.tap_dir)


if __name__ == "__main__":
    sys.exit(main())
