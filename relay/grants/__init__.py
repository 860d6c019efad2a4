"""Just-in-time grants: standing access a flow's rules do not give, asked for, approved, timed.

::

    POST grants_path            the requester's token, flow, reason, ttl → 202, grant pending
          │
    POST grants_path/ID/approve an approver's token (the flow's ``approval.approvers``,
          │                     never the requester) → approved, ends ttl later
          ▼
    POST token_path             the requester's token exchange for that flow succeeds:
          │                     the token names the grant, its exp no later than the grant's end
    every request with it       admitted only while the grant is approved and not ended

A grant is one document (``relay.grants.model``) whose state only moves forward
(pending → approved or denied → revoked or expired), so every process and instance
holding it agrees on where it stands. Changes are made by one writer
(``relay.grants.store``): relayd itself, with workers the supervisor, with ``[shared]
redis`` Redis; kept in ``state_dir/grants.json`` (``relay.grants.file``) and in the
shared table ``grants`` (``relay.grants.shared``). Every change is one audit record
(``relay.grants.records``).
"""
