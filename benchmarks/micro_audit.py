"""What one audit record costs at flush: its fields, its chained line, its metrics.

A batch of 2,048 notes of a typical relayed request (one token) is serialised and counted
as the audit log's flush does; the best of 5 repetitions is printed per note.

    python -m benchmarks.micro_audit
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import timeit
from pathlib import Path

from relay.audit import AuditLog, ExchangeNote, _exchange_fields
from relay.config import AuditConfig
from relay.identity import Identity
from relay.metrics import Metrics

BATCH = 2048


def _note() -> ExchangeNote:
    who = Identity("bench-000000", "bench", ("bench-readers",), (), {}, "RS256-000000", "k1", 2_000_000_000)
    return ExchangeNote(time.time(), "a0b5b28a-000797f1", 200, "relayed", "data", "GET", "/index.txt", "127.0.0.1",
                        "up", None, 0, 138, 0.000836, who, 0.000801, None, None)


def _per_note_us(call: object) -> float:
    assert callable(call)
    return min(timeit.repeat(call, number=20, repeat=5)) / 20 / BATCH * 1e6


async def main() -> None:
    notes = [_note()] * BATCH
    metrics = Metrics()
    with tempfile.TemporaryDirectory() as scratch:
        audit = AuditLog(AuditConfig(path=str(Path(scratch) / "audit.jsonl")), asyncio.get_running_loop())

        def serialise() -> None:
            audit._pending = list(notes)
            audit._serialise()

        def fields() -> None:
            for note in notes:
                _exchange_fields(note)

        print(f"line (fields, orjson, SHA-256): {_per_note_us(serialise):.2f} µs a record")
        print(f"  of which the field dict:      {_per_note_us(fields):.2f} µs")
        print(f"metrics counted from the note:  {_per_note_us(lambda: metrics.count_exchanges(notes)):.2f} µs")
        audit.close()


if __name__ == "__main__":
    asyncio.run(main())
