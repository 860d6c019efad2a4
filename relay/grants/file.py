"""The grants state file, ``STATE_DIR/grants.json``: grants survive a restart.

::

    {"format": "relay-grants", "version": 1, "grants": [{"grant_id": "…", "flow": "…", …}]}

Written before a change is acknowledged (by relayd, or with workers the supervisor) and
read by every process before it serves (``relay.state_document.StateFile``). A corrupt
file stops relayd from starting: serving without it would forget revoked grants.
"""

from __future__ import annotations

from relay.grants.model import Grant
from relay.state_document import StateFile

__all__ = ["FILE_NAME", "GrantFile", "documents"]

FILE_NAME = "grants.json"


class GrantFile(StateFile[dict[str, object]]):
    def __init__(self, state_dir: str) -> None:
        super().__init__(state_dir, FILE_NAME, "relay-grants", 1, "grants", _parse,
                         "grants file", "which grants were revoked")

    def grants(self) -> list[Grant]:
        """:meth:`open`, as grants. Raises StartupError."""
        return [Grant.from_json(document) for document in self.open()]


def documents(grants: list[Grant]) -> list[dict[str, object]]:
    return [grant.as_json() for grant in grants]


def _parse(entries: list[object]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, entry in enumerate(entries):
        try:
            out.append(Grant.from_json(entry).as_json())
        except ValueError as exc:
            raise ValueError(f"grants[{i}]: {exc}") from None
    return out
