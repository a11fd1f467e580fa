"""One user's MLflow data (experiment, run with a metric, artifact, registered model and
version) and the check that another user can neither read nor change any of it, through
whichever path to MLflow the test names: the jobs' port, the hub's public proxy, a session's
/werkbank/mlflow/ path."""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class OwnData:
    owner: str
    experiment_id: str
    run_id: str
    model: str
    artifact: str = "notes.txt"


def create_own_data(base: str, token: str, owner: str) -> OwnData:
    """``owner``'s experiment, run (metric ``loss`` 0.5), artifact and model version 1, made
    through the MLflow REST API at ``base`` (``.../services/mlflow``) with their ``token``."""
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    with httpx.Client(base_url=f"{base}/", headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:

        def post(path: str, body: dict) -> dict:
            r = c.post(f"api/2.0/mlflow/{path}", json=body)
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
            return r.json()

        experiment_id = post("experiments/create", {"name": f"{owner}/private-{tag}"})["experiment_id"]
        run = post("runs/create", {"experiment_id": experiment_id})["run"]["info"]
        post("runs/log-metric", {"run_id": run["run_id"], "key": "loss", "value": 0.5, "timestamp": 0})
        artifacts = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
        r = c.put(f"api/2.0/mlflow-artifacts/artifacts/{artifacts}/notes.txt", content=b"private")
        assert r.status_code == 200, r.text
        model = f"{owner}-model-{tag}"
        post("registered-models/create", {"name": model})
        post(
            "model-versions/create",
            {"name": model, "source": run["artifact_uri"], "run_id": run["run_id"]},
        )
    return OwnData(owner, experiment_id, run["run_id"], model)


def assert_out_of_reach(data: OwnData, base: str, headers: dict[str, str], expected: int = 403) -> None:
    """Every read and write of ``data`` through ``base`` as the caller of ``headers`` is refused
    with ``expected`` (403 for another user, 401 for nobody), and searches leave it out."""
    refused = []
    with httpx.Client(base_url=f"{base}/", headers=headers, timeout=30) as c:
        api = "api/2.0/mlflow"
        artifacts = f"api/2.0/mlflow-artifacts/artifacts/{data.experiment_id}/{data.run_id}/artifacts"
        reads = [
            f"{api}/experiments/get?experiment_id={data.experiment_id}",
            f"{api}/runs/get?run_id={data.run_id}",
            f"{api}/metrics/get-history?run_id={data.run_id}&metric_key=loss",
            f"{api}/artifacts/list?run_id={data.run_id}",
            f"{artifacts}/{data.artifact}",
            f"get-artifact?path={data.artifact}&run_uuid={data.run_id}",
            f"{api}/registered-models/get?name={data.model}",
            f"{api}/model-versions/get?name={data.model}&version=1",
            f"{api}/model-versions/get-download-uri?name={data.model}&version=1",
        ]
        for path in reads:
            refused.append(("GET", path, answer(c.get(path))))
        writes = [
            (
                "POST",
                f"{api}/runs/log-metric",
                {"run_id": data.run_id, "key": "loss", "value": 9, "timestamp": 0},
            ),
            ("POST", f"{api}/runs/set-tag", {"run_id": data.run_id, "key": "x", "value": "y"}),
            ("POST", f"{api}/runs/delete", {"run_id": data.run_id}),
            ("POST", f"{api}/runs/create", {"experiment_id": data.experiment_id}),
            ("POST", f"{api}/experiments/delete", {"experiment_id": data.experiment_id}),
            ("POST", f"{api}/experiments/update", {"experiment_id": data.experiment_id, "new_name": "x"}),
            ("POST", f"{api}/registered-models/rename", {"name": data.model, "new_name": f"{data.model}-x"}),
            (
                "POST",
                f"{api}/registered-models/alias",
                {"name": data.model, "alias": "champion", "version": "1"},
            ),
            ("POST", f"{api}/model-versions/create", {"name": data.model, "source": "mlflow-artifacts:/x"}),
            ("DELETE", f"{api}/model-versions/delete", {"name": data.model, "version": "1"}),
            ("DELETE", f"{api}/registered-models/delete", {"name": data.model}),
        ]
        for method, path, body in writes:
            refused.append((method, path, answer(c.request(method, path, json=body))))
        r = c.put(f"{artifacts}/{data.artifact}", content=b"overwritten")
        refused.append(("PUT", f"{artifacts}/{data.artifact}", answer(r)))
        r = c.delete(f"{artifacts}/{data.artifact}")
        refused.append(("DELETE", f"{artifacts}/{data.artifact}", answer(r)))
        searches = {
            "experiments": c.post(f"{api}/experiments/search", json={"max_results": 1000}),
            "models": c.get(f"{api}/registered-models/search", params={"max_results": 1000}),
        }
    wrong = [(method, path, status) for method, path, status in refused if status != expected]
    assert not wrong, f"answers other than {expected}: {wrong}"
    if expected == 403:
        found = searches["experiments"].json().get("experiments", [])
        assert data.experiment_id not in {e["experiment_id"] for e in found}
        found = searches["models"].json().get("registered_models", [])
        assert data.model not in {m["name"] for m in found}


def answer(r: httpx.Response) -> int:
    """The status, with a redirect to the hub's login (what a browser without one is sent for
    a UI route such as get-artifact) read as the 401 it stands for."""
    if r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers.get("Location", ""):
        return 401
    return r.status_code


def assert_unchanged(data: OwnData, base: str, token: str) -> None:
    """``data`` as its owner made it: nothing renamed, logged, overwritten or deleted."""
    with httpx.Client(base_url=f"{base}/", headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        api = "api/2.0/mlflow"
        run = c.get(f"{api}/runs/get", params={"run_id": data.run_id}).json()["run"]
        assert run["info"]["lifecycle_stage"] == "active"
        assert [(m["key"], m["value"]) for m in run["data"]["metrics"]] == [("loss", 0.5)]
        assert "x" not in {t["key"] for t in run["data"].get("tags", [])}
        experiment = c.get(f"{api}/experiments/get", params={"experiment_id": data.experiment_id}).json()
        assert experiment["experiment"]["name"].startswith(f"{data.owner}/private-")
        artifact = (
            f"api/2.0/mlflow-artifacts/artifacts/{data.experiment_id}/{data.run_id}/artifacts/notes.txt"
        )
        assert c.get(artifact).content == b"private"
        model = c.get(f"{api}/registered-models/get", params={"name": data.model}).json()["registered_model"]
        assert not model.get("aliases")
        versions = c.get(f"{api}/model-versions/search", params={"filter": f"name='{data.model}'"}).json()
        assert [v["version"] for v in versions["model_versions"]] == ["1"]
