"""relay's benchmarks.

Two tiers: ``micro_fastpath`` times each fast-path function compiled vs pure Python;
``python -m benchmarks`` measures relayd end to end beside its peers (lighttpd alone,
HAProxy plain and with ``jwt_verify``, an aiohttp + PyJWT proxy) in one run::

    wrk ──▶ system under test ──▶ upstreams (lighttpd: a 100-byte file; discard: uploads)

    scenarios      what is measured: a start function, a request target, a wrk script;
                   and the comparisons, with the product's targets
    systems        how each system under test is brought up, with its configuration
    aiohttp_proxy  the aiohttp + PyJWT baseline; discard: the upload target
    procs          child processes by PID, CPU pinning, CPU time and peak RSS from /proc
    tokens         benchmark signing keys and pre-minted JWTs (cached between runs)
    loadgen        wrk runs and what their Lua ``done`` hook (wrk/report.lua) reports
    runner         repetitions, probes, per-scenario failure isolation
    report         the tables, the targets, JSON; chart draws the PNG; machine the host
"""
