"""What the hub's authenticating MLflow proxy costs: ``runs/log-batch`` latency straight to the
MLflow server vs through the proxy (as jobs and as browsers reach it), measured in the same run,
interleaved.

    /opt/werkbank/venv/bin/python benchmarks/mlflow_proxy.py [--requests 200] [--metrics 50] [--keep]

Starts a real JupyterHub from ``hub_config/jupyterhub_config.py`` with a private site file (local
spawner, no servers are spawned, ports 186xx/156xx), which starts MLflow and the proxy as managed
services exactly as in production, and a user token for the proxy. Then, per request, one
``log-batch`` of ``--metrics`` values (what ``MetricLogger`` sends about once a second) to:

- ``direct``: the MLflow server on loopback (``127.0.0.1:<port>/services/mlflow``), with the
  assertion the proxy would send (signed for each request with the key read from the hub's
  configuration), so that MLflow does the same checks as behind the proxy;
- ``service``: the proxy service on its own port, as jobs reach it (``MLFLOW_TRACKING_URI``, where
  they reach the hub API): token check (cached), header rewriting, forwarding on kept-alive
  connections;
- ``hub``: ``<hub>/services/mlflow``, as browsers reach it: configurable-http-proxy, then the
  proxy service (and what jobs would pay with ``public_url`` set to the hub's public URL);

each with ``reused`` connections (one ``httpx.Client``), a ``new`` connection per request, and
MLflow's own client (``MlflowClient.log_batch``, a ``requests`` session). Prints p50/p95 and the
ratios to ``direct``; asserts nothing. Targets at p50: the proxy adds at most 5 % on the path
jobs use (``service``), at most 10 % through the hub (``hub``).

``--no-permissions`` runs the hub with ``tracking.mlflow.permissions: false`` (MLflow without
its basic-auth app): run both to see what MLflow's permission checks cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from werkbank_spawner.tracking.auth import Identity
from werkbank_spawner.tracking.proxy import assertion_header

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/services.py: how the tests and the benchmarks start services
from tests.services import Process, answers  # noqa: E402

VENV_BIN = Path(sys.executable).parent
HUB_PORT, HUB_API_PORT, MLFLOW_PORT, PROXY_PORT = 18600, 18681, 15600, 15601
PREFIX = "/services/mlflow"
ADMIN_TOKEN = "werkbank-bench-" + os.urandom(16).hex()
USER = "bench"

TARGETS = {
    "direct": f"http://127.0.0.1:{MLFLOW_PORT}{PREFIX}",
    "service": f"http://127.0.0.1:{PROXY_PORT}{PREFIX}",
    "hub": f"http://127.0.0.1:{HUB_PORT}{PREFIX}",
}
MODES = ("reused", "new", "mlflow-client")


def site(work: Path, permissions: bool) -> dict:
    s = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    s["hub"].update(
        bind_url=f"http://127.0.0.1:{HUB_PORT}",
        hub_bind_url=f"http://127.0.0.1:{HUB_API_PORT}",
        data_dir=str(work / "hub"),
        spawner="local",
    )
    s["auth"].update(allowed_users=[USER])
    s["tracking"]["mlflow"].update(
        port=MLFLOW_PORT,
        url=f"http://127.0.0.1:{MLFLOW_PORT}",
        proxy_port=PROXY_PORT,
        permissions=permissions,
        backend_store_uri=f"sqlite:///{work}/mlflow/mlflow.db",
        artifacts_destination=str(work / "mlflow" / "artifacts"),
    )
    s["culling"] = {"enabled": False}
    return s


EXTRA = f"""
# The key the proxy signs its assertions to MLflow with, for the benchmark's direct requests.
_proxy = next(s for s in c.JupyterHub.services if s["name"] == "mlflow")
from werkbank_spawner.site.services import process_secret
_key = process_secret("signing") if "WERKBANK_MLFLOW_SECRETS" in _proxy.get("environment", {{}}) else ""
(Path(__file__).parent.parent / "signing-key").write_text(_key)
c.JupyterHub.services = list(c.JupyterHub.services) + [{{"name": "bench", "api_token": {ADMIN_TOKEN!r}}}]
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "bench", "services": ["bench"], "scopes": ["admin:users", "tokens"]}}
]
"""


def start_hub(work: Path, permissions: bool) -> Process:
    (work / "mlflow").mkdir(parents=True)
    (work / "jupyterhub_config.d").mkdir()
    shutil.copy(REPO / "hub_config" / "jupyterhub_config.py", work / "jupyterhub_config.py")
    (work / "jupyterhub_config.d" / "90-bench.py").write_text(EXTRA)
    (work / "site.yaml").write_text(yaml.safe_dump(site(work, permissions)))
    env = dict(os.environ, WERKBANK_SITE_CONFIG=str(work / "site.yaml"))
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    argv = [str(VENV_BIN / "jupyterhub"), "-f", str(work / "jupyterhub_config.py")]
    hub = Process("JupyterHub", argv, log_path=work / "jupyterhub.log", env=env, cwd=work).start()
    hub.wait_until(lambda: answers(f"http://127.0.0.1:{HUB_PORT}/hub/health"), 90, "the hub")
    hub.wait_until(lambda: answers(f"{TARGETS['hub']}/health"), 180, "MLflow through the hub")
    return hub


def user_token() -> str:
    hub = f"http://127.0.0.1:{HUB_PORT}/hub/api"
    headers = {"Authorization": f"token {ADMIN_TOKEN}"}
    httpx.post(f"{hub}/users/{USER}", headers=headers, timeout=30)
    r = httpx.post(f"{hub}/users/{USER}/tokens", headers=headers, json={"note": "benchmark"}, timeout=30)
    r.raise_for_status()
    return r.json()["token"]


def batch(run_id: str, metrics: int, step: int) -> dict:
    now = int(time.time() * 1000)
    return {
        "run_id": run_id,
        "metrics": [
            {"key": f"m{i % 5}", "value": 1.0 / (step + 1), "timestamp": now, "step": step * metrics + i}
            for i in range(metrics)
        ],
    }


class SignedAs(httpx.Auth):
    """Each request carries the assertion the proxy would add, signed for it: MLflow asked
    directly does the same checks as behind the proxy (which drops the header and signs anew)."""

    def __init__(self, user: str, key: bytes):
        self.identity, self.key = Identity(user), key

    def header(self, method: str, target: str) -> tuple[str, str]:
        return assertion_header(self.identity, self.key, method, target)

    def auth_flow(self, request):
        name, value = self.header(request.method, request.url.raw_path.decode())
        request.headers[name] = value
        yield request


def _sign_from_mlflow_client(signer: SignedAs) -> None:
    """Make MLflow's client sign every request (``MLFLOW_TRACKING_AUTH``, a request auth provider:
    a ``requests`` auth that sees the prepared request)."""
    from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
    from mlflow.tracking.request_auth.registry import _request_auth_provider_registry

    def sign(request):
        name, value = signer.header(request.method, request.path_url)
        request.headers[name] = value
        return request

    class Provider(RequestAuthProvider):
        def get_name(self):
            return "werkbank-bench"

        def get_auth(self):
            return sign

    _request_auth_provider_registry.register(Provider)
    os.environ["MLFLOW_TRACKING_AUTH"] = "werkbank-bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per target and mode (200)")
    parser.add_argument("--metrics", type=int, default=50, help="values per log-batch (50)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per target and mode")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (hub log)")
    parser.add_argument(
        "--no-permissions", action="store_true", help="MLflow without permission checks (permissions: false)"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="werkbank-bench-mlflow-"))
    os.chmod(work, 0o755)
    hub = start_hub(work, permissions=not args.no_permissions)
    try:
        token = user_token()
        # Every target gets the same request: the proxy drops the signed assertion and signs its
        # own; MLflow, asked directly, takes it as the proxy's.
        signer = SignedAs(USER, (work / "signing-key").read_text().encode())
        auth = {"Authorization": f"Bearer {token}"}
        _sign_from_mlflow_client(signer)
        os.environ["MLFLOW_TRACKING_TOKEN"] = token  # MLflow's client sends it; MLflow ignores it
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        setup = MlflowClient(TARGETS["hub"])
        experiment = setup.create_experiment(f"bench-{int(time.time())}")
        run_id = setup.create_run(experiment).info.run_id

        reused = {name: httpx.Client(headers=auth, auth=signer, timeout=30) for name in TARGETS}
        # A new TCP connection for every request (the client itself is built once: building
        # one costs more than the connection).
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        fresh = {
            name: httpx.Client(headers=auth, auth=signer, timeout=30, limits=no_keepalive) for name in TARGETS
        }
        clients = {name: MlflowClient(url) for name, url in TARGETS.items()}
        step = 0

        def once(target: str, mode: str) -> float:
            nonlocal step
            step += 1
            body = batch(run_id, args.metrics, step)
            url = f"{TARGETS[target]}/api/2.0/mlflow/runs/log-batch"
            started = time.perf_counter()
            if mode == "reused":
                r = reused[target].post(url, json=body)
            elif mode == "new":
                r = fresh[target].post(url, json=body)
            else:
                metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in body["metrics"]]
                clients[target].log_batch(run_id, metrics=metrics, synchronous=True)
                return time.perf_counter() - started
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise SystemExit(f"{target}/{mode}: {r.status_code} {r.text[:300]}")
            return elapsed

        combos = [(t, m) for m in MODES for t in TARGETS]
        for _ in range(args.warmup):
            for combo in combos:
                once(*combo)
        times: dict[tuple[str, str], list[float]] = {combo: [] for combo in combos}
        for _ in range(args.requests):  # interleaved, so that load changes hit all alike
            for combo in combos:
                times[combo].append(once(*combo))

        checks = "without MLflow's permission checks" if args.no_permissions else "MLflow checks permissions"
        print(
            f"log-batch of {args.metrics} values, {args.requests} requests each, interleaved, {checks} "
            f"({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})"
        )
        print(f"{'mode':<14}{'target':<9}{'p50 ms':>9}{'p95 ms':>9}{'p50 ratio':>11}{'p95 ratio':>11}")
        summary = {}
        for mode in MODES:
            base = times[("direct", mode)]
            for target in TARGETS:
                t = times[(target, mode)]
                p50, p95 = statistics.median(t), percentile(t, 0.95)
                r50, r95 = p50 / statistics.median(base), p95 / percentile(base, 0.95)
                summary[f"{mode}/{target}"] = {"p50_ms": 1000 * p50, "p95_ms": 1000 * p95, "p50_ratio": r50}
                print(f"{mode:<14}{target:<9}{1000 * p50:>9.2f}{1000 * p95:>9.2f}{r50:>10.2f}x{r95:>10.2f}x")
        for mode in MODES:
            print(
                f"{mode}: jobs' path (service) {summary[f'{mode}/service']['p50_ratio']:.2f}x, "
                f"through the hub's public proxy {summary[f'{mode}/hub']['p50_ratio']:.2f}x of direct at p50 "
                "(targets: at most 1.05x on the jobs' path, 1.10x through the hub)"
            )
        print(json.dumps(summary))
    finally:
        hub.stop(30, group=True)
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
