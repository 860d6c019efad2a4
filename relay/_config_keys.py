"""The ``[server]`` keys of relay's signing key rotation, and the check that needs the
flows too: a rotation period long enough for a key to be published before it signs and
to stay published until every token it signed has expired."""

from __future__ import annotations

from relay._config_read import Table
from relay.config import FlowConfig, ServerConfig, TokensConfig
from relay.identity.key_rotation import longest_token_life, publication_lead
from relay.units import format_duration

_NEVER = "never"
_YEAR = 366 * 86400.0


def key_rotation(t: Table, default: float | None) -> float | None:
    """``identity_key_rotation``: a duration, or "never"."""
    if t.data.get("identity_key_rotation") == _NEVER:
        return None
    return t.duration("identity_key_rotation", default, 1.0, _YEAR)


def check_key_rotation(root: Table, server: ServerConfig, flows: tuple[FlowConfig, ...],
                       tokens: TokensConfig | None) -> None:  # fmt: skip
    period = server.identity_key_rotation
    if period is None:
        return
    lead = publication_lead(server.identity_jwks_refresh)
    life = longest_token_life(flows, tokens)
    if period > lead + life:
        return
    longest = max(flows, key=lambda f: f.max_token_ttl or 0.0, default=None)
    why = (f"the max_token_ttl of flow {longest.name}" if longest is not None and longest.max_token_ttl == life
           else "X-Relay-Identity tokens")  # fmt: skip
    root.report("server.identity_key_rotation", (
        f"{format_duration(period)} is too short: each key is published {format_duration(lead)} before it signs "
        f"(identity_jwks_refresh plus the time every worker takes to see it) and stays published "
        f"{format_duration(life)} after it stops ({why}, the longest token relay signs): "
        f"make it longer than {format_duration(lead + life)}"))
