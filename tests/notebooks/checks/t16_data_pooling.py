"""16-data-pooling: a parent run with a child run per model (each company's local model, pooled, federated).

Checked from outside: every test AUC, per company and macro-averaged, recomputed with scikit-learn from the
logged test predictions; federated within the logged margin of pooled and above every local model; the
logged message log holds only weights of the model's shapes (built here from the logged architecture),
counts and named scores, four messages per company and round; and every run carries the sharing terms of
exactly the companies whose data it used."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.notebooks.lifecycle import Execution, parent_and_children

NEEDS: tuple[str, ...] = ()
TEMPLATE = "16-data-pooling"
SHARING = ("owner", "licence", "purpose", "legal_basis", "shared_as")


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def check(execution: Execution) -> None:
    client = execution.client
    parent, children = parent_and_children(client, execution.experiment_name, TEMPLATE)
    params = parent.data.params
    companies = params["clients"].split(",")
    assert params["size"] == "smoke" and len(companies) == 3, params
    models = [f"local:{name}" for name in companies] + ["pooled", "federated"]
    assert sorted(children) == sorted(models), sorted(children)

    with tempfile.TemporaryDirectory() as scratch:
        predictions = pd.read_csv(client.download_artifacts(parent.info.run_id, "predictions.csv", scratch))
        federated_id = children["federated"].info.run_id
        log = client.download_artifacts(federated_id, "federated/messages.json", scratch)
        messages = json.loads(Path(log).read_text())
    macro = assert_aucs_follow_from_predictions(predictions, children, companies)
    margin = float(params["margin"])
    assert macro["federated"] >= macro["pooled"] - margin, macro
    assert macro["federated"] > max(macro[f"local:{name}"] for name in companies), macro
    assert_only_weights_crossed(messages, params, companies)
    assert parent.data.metrics["message_violations"] == 0
    assert_sharing_tags(children, companies)
    # The federated run logged its validation AUC per round, one step per round.
    history = client.get_metric_history(children["federated"].info.run_id, "val_auc.macro")
    assert sorted(m.step for m in history) == list(range(1, int(params["rounds"]) + 1))


def assert_aucs_follow_from_predictions(predictions: pd.DataFrame, children: dict, companies: list) -> dict:
    """Each child's test AUC per company, its macro average and the union's, from the logged scores."""
    assert set(predictions["company"]) == set(companies)
    macro = {}
    for key, run in children.items():
        metrics, per_company = run.data.metrics, []
        for name in companies:
            rows = predictions[predictions["company"] == name]
            value = roc_auc_score(rows["critical_ahead"], rows[f"score.{key}"])
            assert metrics[f"test_auc.{name}"] == pytest.approx(value, abs=1e-9), (key, name)
            per_company.append(value)
        macro[key] = float(np.mean(per_company))
        assert metrics["test_auc.macro"] == pytest.approx(macro[key], abs=1e-9), key
        union = roc_auc_score(predictions["critical_ahead"], predictions[f"score.{key}"])
        assert metrics["test_auc.union"] == pytest.approx(union, abs=1e-9), key
        assert metrics["test_auc.macro_ci_low"] <= macro[key] <= metrics["test_auc.macro_ci_high"], key
    return macro


def assert_only_weights_crossed(messages: list, params: dict, companies: list) -> None:
    """Every message is weights of the MLP's shapes (built here from the logged parameters), or a reply of
    exactly (weights, int) to fit and ({auc, loss}, int) to evaluate; four per company and round."""
    features, hidden = len(params["features"].split(",")), int(params["hidden"])
    shapes = {
        "0.weight": [hidden, features],
        "0.bias": [hidden],
        "2.weight": [hidden, hidden],
        "2.bias": [hidden],
        "4.weight": [1, hidden],
        "4.bias": [1],
    }
    weights = {"dict": {key: {"tensor": shape, "dtype": "float32"} for key, shape in shapes.items()}}
    for message in messages:
        content = message["content"]
        if message["direction"] == "to client":
            assert content == weights, message
            continue
        assert len(content.get("sequence", [])) == 2, f"a reply that is not (payload, count): {message}"
        reply, count = content["sequence"]
        assert list(count) == ["int"] and count["int"] > 0, message
        if message["kind"] == "fit":
            assert reply == weights, message
        else:
            assert set(reply["dict"]) == {"auc", "loss"}, message
            assert all(list(value) == ["float"] for value in reply["dict"].values()), message
    rounds = int(params["rounds"])
    seen = sorted((m["round"], m["client"], m["direction"], m["kind"]) for m in messages)
    expected = sorted(
        (r, name, direction, kind)
        for r in range(1, rounds + 1)
        for name in companies
        for direction in ("to client", "to server")
        for kind in ("fit", "evaluate")
    )
    assert seen == expected


def assert_sharing_tags(children: dict, companies: list) -> None:
    """Local models carry their own company's terms (shared as none), pooled every company's as data,
    federated every company's as weights; no run carries the terms of a company whose data it did not use."""
    how = {f"local:{name}": ("none", [name]) for name in companies}
    how |= {"pooled": ("data", companies), "federated": ("weights", companies)}
    for key, run in children.items():
        shared_as, used = how[key]
        tags = run.data.tags
        assert tags["werkbank.sharing.companies"] == ",".join(used), key
        for name in companies:
            for field in SHARING:
                assert (f"werkbank.sharing.{name}.{field}" in tags) == (name in used), (key, name, field)
        for name in used:
            assert tags[f"werkbank.sharing.{name}.shared_as"] == shared_as, (key, name)
            assert tags[f"werkbank.sharing.{name}.licence"], (key, name)
