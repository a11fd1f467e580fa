"""Each user's own MLflow experiment, ``<user>/default``, made by the hub before their first session.

Every session and job logs there until the code picks an experiment (``MLFLOW_EXPERIMENT_NAME``).
If anyone else could create it first, they would own it, and with it every run the user logs
without naming an experiment. The proxy's project rule already refuses such names from others;
creating the experiment at the user's first spawn, *as the user*, leaves nothing to take: MLflow
gives its creator MANAGE on it, and the hub records the owner tag the proxy would have set.

The hub reaches the MLflow server directly on loopback, with an assertion signed for each request
(:mod:`werkbank_spawner.tracking.auth`), as the proxy does.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .auth import ASSERTION_HEADER, Identity, sign

#: The tag the proxy sets on experiments: who created it (proxy.EXPERIMENT_OWNER_TAG).
OWNER_TAG = "werkbank.owner"


class MlflowSetupError(RuntimeError):
    """MLflow could not be asked, or refused; ``str()`` says which."""


def default_experiment(user: str) -> str:
    return f"{user}/default"


async def ensure_default_experiment(server_url: str, key: bytes, user: str, *, timeout: float = 10) -> bool:
    """Create ``<user>/default`` as ``user`` on the MLflow server at ``server_url`` (its base URL
    with the static prefix, e.g. ``http://127.0.0.1:5000/services/mlflow``) unless it exists.

    Returns True if it was created now. Raises :class:`MlflowSetupError`.
    """
    name = default_experiment(user)
    found = await _call(server_url, key, user, "GET", "experiments/get-by-name", timeout, name=name)
    if found is not None:
        return False
    body = {"name": name, "tags": [{"key": OWNER_TAG, "value": user}]}
    await _call(server_url, key, user, "POST", "experiments/create", timeout, body=body)
    return True


async def _call(server_url, key, user, method, endpoint, timeout, *, name="", body=None) -> dict | None:
    """One REST call as ``user``; None for MLflow's RESOURCE_DOES_NOT_EXIST."""
    path = urlsplit(server_url).path.rstrip("/") + "/api/2.0/mlflow/" + endpoint
    query = f"experiment_name={quote(name, safe='')}" if name else ""
    headers = {ASSERTION_HEADER: sign(key, Identity(user), method, path, query)}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = HTTPRequest(
        server_url.rstrip("/") + "/api/2.0/mlflow/" + endpoint + (f"?{query}" if query else ""),
        method=method,
        headers=headers,
        body=json.dumps(body) if body is not None else None,
        request_timeout=timeout,
        connect_timeout=timeout,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        answer = e.response.body.decode(errors="replace")[:300] if e.response is not None else ""
        if e.code == 404 and "RESOURCE_DOES_NOT_EXIST" in answer:
            return None
        if e.code == 400 and "RESOURCE_ALREADY_EXISTS" in answer:
            return {}  # another hub process or a session made it meanwhile
        raise MlflowSetupError(f"MLflow answered {method} {endpoint} with {e.code}: {answer}") from None
    except OSError as e:
        raise MlflowSetupError(f"MLflow does not answer at {server_url}: {e}") from None
    return json.loads(response.body or b"{}")
