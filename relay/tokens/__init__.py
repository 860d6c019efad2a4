"""relay as an OAuth authorization server for agents: short-lived, flow-scoped tokens.

::

    POST token_path (RFC 8693)   subject_token [+ actor_token] + scope=flow:NAME …
          │  both verified like any bearer token (verified-token cache, revocations)
          ▼
    exchange.decide              every flow asked: max_token_ttl set, its rules allow
          │                      the subject (and the actor, if the flow says so)
          ▼
    IdentitySigner.sign          iss = [tokens].issuer, sub, act, scope, jti, exp
          │
    own.OwnTokens                relay accepts the token back, for the flows it names only

``POST introspection_path`` (RFC 7662) says whether relay would accept a token now;
``GET metadata_path`` (RFC 8414) names the endpoints. Every decision is one audit record
(``relay.tokens.records``).
"""
