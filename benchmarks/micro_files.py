"""What relayd spends per request on a 4 KiB file, in instructions: files sink vs HTTP sink.

relayd runs under ``valgrind --tool=callgrind`` (instruction counts do not move with the
machine's load, as req/s does) with one public flow per way of answering a GET for the
same 4 KiB file: the files sink answering X-Sendfile (the request says it comes from
lighttpd, over the Unix socket), the files sink sending the file itself, and an HTTP sink
fetching it from a lighttpd serving the directory. For each, after a warm-up, the
counters are zeroed, ``REQUESTS`` requests are sent on one keep-alive connection, and the
instructions counted are divided by them.

    python -m benchmarks.micro_files
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.procs import Proc

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 400
WAYS = {  # label → (path, extra request header)
    "files sink, X-Sendfile answer": ("/files/4KiB.txt", b"X-Sendfile-Type: X-Sendfile\r\n"),
    "files sink, relayd sends the file": ("/streamed/4KiB.txt", b""),
    "HTTP sink to lighttpd": ("/files-http/4KiB.txt", b""),
}


def _config(work: Path, upstream: int) -> str:
    root = work / "htdocs/files"
    flows = "".join(f'[[flow]]\nname = "{sink}"\npath = "{path}"\nmethods = ["GET"]\nauth = "none"\nsink = "{sink}"\n'
                    for path, sink in (("/files/", "files"), ("/streamed/", "streamed"), ("/files-http/", "upstream")))
    return f"""\
[server]
listen = ["unix:{work / 'relay.sock'}"]
max_loop_lag = "0s"
[audit]
path = "{work / 'audit.jsonl'}"
[sink.files]
type = "files"
root = "{root}"
[sink.streamed]
type = "files"
root = "{root}"
delivery = "relay"
[sink.upstream]
type = "http"
url = "http://127.0.0.1:{upstream}"
{flows}"""


def _load(sock_path: str, path: str, extra: bytes, count: int) -> None:
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n" + extra + b"\r\n"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(sock_path)
        for _ in range(count):
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += sock.recv(65536)


def _instructions(pid: int) -> int:
    """Zeroes the counters after reading them: the instructions since the last call."""
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True, timeout=120)
    dumps = sorted(Path(os.environ["RELAY_CALLGRIND_DIR"]).glob("callgrind.out.*"), key=os.path.getmtime)
    text = dumps[-1].read_text()
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True, timeout=120)
    match = re.search(r"^summary: (\d+)", text, re.MULTILINE) or re.search(r"^totals: (\d+)", text, re.MULTILINE)
    assert match, "no totals in the callgrind dump"
    return int(match.group(1))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="relay-micro-files-") as scratch:
        work = Path(scratch)
        files = work / "htdocs/files"
        files.mkdir(parents=True)
        (files / "4KiB.txt").write_bytes(b"relay files sink: four KiB of text.\n" * 113 + b"." * 28)
        (work / "htdocs/files-http").symlink_to("files")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (work / "up.conf").write_text(f'server.document-root = "{work / "htdocs"}"\nserver.bind = "127.0.0.1"\n'
                                      f"server.port = {port}\nserver.max-keep-alive-requests = 1000000\n")
        (work / "relay.toml").write_text(_config(work, port))
        os.environ["RELAY_CALLGRIND_DIR"] = str(work)
        upstream = Proc("upstream", ["lighttpd", "-D", "-f", str(work / "up.conf")], work / "up.log", cpus=None)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        relayd = Proc("relayd", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.out.%p",
                                 sys.executable, "-m", "relay", "-c", str(work / "relay.toml")],
                      work / "relayd.log", cpus=None, env=env, cwd=ROOT)
        try:
            upstream.wait_ready([("127.0.0.1", port)])
            relayd.wait_ready([str(work / "relay.sock")], timeout=300)
            for label, (path, extra) in WAYS.items():
                _load(str(work / "relay.sock"), path, extra, 50)  # warm: caches, pools, code paths
                _instructions(relayd.pid)
                _load(str(work / "relay.sock"), path, extra, REQUESTS)
                print(f"{label:36} {_instructions(relayd.pid) / REQUESTS:>12,.0f} instructions/request")
        finally:
            relayd.stop(30)
            upstream.stop()


if __name__ == "__main__":
    main()
