"""How long a revocation takes to reach every relayd sharing one Redis.

Three relayd (one fail-open) and a redis-server of its own, as tests/test_e2e_shared.py
starts them; each round revokes a fresh subject with ``relayctl revoke`` on one instance
(in turn) and times, from relayctl's acknowledgement, until all three refuse that
subject's token (each poll is one request per instance, so the figure includes them);
relayctl's own run (a Python start-up, most of it) is reported apart.

    .venv/bin/python -m benchmarks.shared_propagation [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import Relayd, Upstream, poll_until  # noqa: E402
from support.redis import RedisServer  # noqa: E402
from test_e2e_shared import FAIL_OPEN, INSTANCES, refused_everywhere, relayctl, shared_config  # noqa: E402
from test_identity_support import Key, ec_key, good_claims  # noqa: E402


def measure(workdir: Path, rounds: int) -> tuple[list[float], list[float]]:
    key: Key = ec_key("ec-propagation")
    redis, upstream, relays = RedisServer(workdir), Upstream(workdir), []
    try:
        for n in range(INSTANCES):
            home = workdir / f"relay{n}"
            home.mkdir()
            relays.append(Relayd(home, shared_config(home, upstream, key, redis.url, n == FAIL_OPEN)))
        times, commands = [], []
        for i in range(rounds):
            token = key.token(good_claims(sub=f"s{i}", groups=["writers"], exp=good_claims()["iat"] + 600))
            asked = time.monotonic()
            relayctl(relays[i % INSTANCES], "revoke", "sub", f"s{i}", "--ttl", "10m").check_returncode()
            started = time.monotonic()
            commands.append(started - asked)
            poll_until(lambda: refused_everywhere(relays, token) or None, 10, "every instance to refuse")
            times.append(time.monotonic() - started)
        return times, commands
    finally:
        for relayd in relays:
            relayd.stop()
        upstream.stop()
        redis.stop()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory(prefix="relay-prop") as workdir:
        times, commands = measure(Path(workdir), rounds)
    print(f"{INSTANCES} instances, {rounds} revocations: acknowledged → refused by all "
          f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms; "
          f"relayctl revoke itself median {statistics.median(commands) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
