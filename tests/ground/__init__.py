"""The test ground: real servers for the integration and e2e tiers (docs/testing.md).

- `tests.ground.fixtures`: the pytest fixtures (`cluster`, `gpu_nodes`, `local_node`,
  `namespace`, `namespace_factory`, `ground`); `tests.ground.s3_fixtures`: `s3_server`,
  `s3_bucket`, `s3_env`. Both are loaded by tests/conftest.py.
- `tests.ground.cluster`: `Cluster` (clients, kubectl, helm, identities, namespaces)
  and `wait_for`.
- `tests.ground.controlplane`, `kwok`, `localnode` (+ `localpod`), `s3`: the parts.
- `tests.ground.ground`: `Ground`, all parts together; `python -m tests.ground`:
  `make cluster`.
"""
