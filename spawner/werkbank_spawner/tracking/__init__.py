"""MLflow behind the hub: what runs outside the spawner, in the services the hub manages.

- :mod:`.proxy`: the authenticating gateway users and jobs reach at ``/services/mlflow``
  (``python -m werkbank_spawner.tracking.proxy``, a hub-managed service).
- :mod:`.auth`: the authorization function MLflow's basic-auth app calls inside the MLflow
  server; it trusts only the gateway's signed assertion.
- :mod:`.upstream`: the gateway's HTTP/1.1 client to MLflow (kept-alive connections, framing).
- :mod:`.experiments`: each user's ``<user>/default`` experiment, made by the hub.

Nothing is imported here: the MLflow server imports :mod:`.auth` alone.
"""

#: The environment that switches MLflow's usage telemetry off (MLflow's own switch, and the
#: common DO_NOT_TRACK convention it honours too), in every process werkbank starts: the managed
#: server and proxy, sessions, their kernels and batch jobs. An HPC centre's users' data does not
#: leave it, and compute nodes cannot reach the internet anyway.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
