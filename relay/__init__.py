"""relay: an identity-aware data relay daemon.

::

    client ─HTTP─▶ lighttpd ─mod_proxy─▶ relayd ──────────────────────────────▶ sinks
                                         │ protocol   fastpath.whole_request or httptools
                                         │            → fastpath.admit_head (sans-IO):
                                         │ routing    paths.normalize_path → FlowTable,
                                         │            fastpath.scan_headers, token, rules, limits
                                         │ exchange   from callbacks (a task when a body streams), in order
                                         │ sinks      http (pooled), file, stream
                                         │ audit      one JSON line per decision
    control plane: config.load_config → policy.Policy (immutable) → swapped on reload

Modules: ``cli`` (entry points), ``config`` (validated, frozen configuration),
``server`` (listeners, reload, shutdown) with ``context`` (what connections share),
``supervisor`` and ``workers`` (several processes), ``protocol`` (client HTTP/1.1),
``paths`` and ``routing`` (normalized path → flow), ``hosts`` (what a Host may be),
``policy`` (the prepared snapshot),
``identity`` (tokens, keys, authorization, relay's own rotating signing keys), ``tokens`` (relay as an OAuth authorization
server: token exchange, introspection), ``grants`` (just-in-time grants: asked for,
approved, used by token exchange), ``shared`` (state shared through Redis),
``exchange`` (one request's delivery),
``idempotency`` (Idempotency-Key scopes and fingerprints),
``reply`` (response framing), ``sinks`` (destinations), ``fastpath`` (the compiled hot
path or its pure-Python twin), ``audit`` and ``audit_verify``, ``admin``, ``control``
and ``ctl`` with ``admin_client`` and ``ctl_top`` (the admin socket and relayctl), ``metrics``,
``timers``, ``notify``, ``durable`` (files written whole or not at all) with
``state_document`` (the revocations, grants and key state files), ``heap`` (allocator settings for streamed bodies).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
