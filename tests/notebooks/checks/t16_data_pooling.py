"""16-data-pooling: a parent run with a child run per model (each company's local model, pooled, federated).

Checked from outside: every test AUC, per company and macro-averaged, recomputed with scikit-learn from the
logged test predictions; federated within the logged margin of pooled and above every local model; the
logged message log holds only weights of the model's shapes (built here from the logged architecture),
counts and named scores, four messages per company and round; and every run carries the sharing terms of
exactly the companies whose data it used.

Two variants run the template again: ``flower`` (federation through Flower's simulation engine: the message
log is Flower's messages, and the numbers are the plain run's, round by round) and ``dp`` (the federated
clients with DP-SGD: each company's ε, recomputed here with Opacus's accountant from the logged noise,
sampling rate and steps, is at most the target)."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.notebooks.lifecycle import Execution, Variant, parent_and_children

NEEDS: tuple[str, ...] = ()
TEMPLATE = "16-data-pooling"
SHARING = ("owner", "licence", "purpose", "legal_basis", "shared_as")
# How far Flower's numbers may be from the plain path's with the same seeds: the same arithmetic in the same
# order gives the same floats (measured: identical); the room is for a BLAS that rounds differently.
FLOWER_TOLERANCE = 1e-9
VARIANTS = {
    # The plain run first: the Flower run is compared with it, round by round.
    "flower": Variant({"federation": "flower"}, needs=(TEMPLATE,)),
    # DP at the smoke size: ε = 8 per company over the 20 rounds costs about 0.07 of macro AUC (measured);
    # the margin is declared for that price.
    "dp": Variant({"dp_epsilon_target": 8.0, "margin": 0.1}),
}


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def check(execution: Execution) -> None:
    client = execution.client
    parent, children = parent_and_children(client, execution.experiment_name, TEMPLATE)
    params = parent.data.params
    companies = params["clients"].split(",")
    assert params["size"] == "smoke" and len(companies) == 3, params
    assert params["federation"] == ("flower" if execution.variant == "flower" else "plain"), params
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
    if params["federation"] == "flower":
        assert_only_weights_crossed_in_flower(messages, params, companies)
    else:
        assert_only_weights_crossed(messages, params, companies)
    assert parent.data.metrics["message_violations"] == 0
    assert_sharing_tags(children, companies)
    # The federated run logged its validation AUC per round, one step per round.
    history = client.get_metric_history(children["federated"].info.run_id, "val_auc.macro")
    assert sorted(m.step for m in history) == list(range(1, int(params["rounds"]) + 1))

    federated = children["federated"].data.metrics
    if execution.variant == "dp":
        assert_privacy_accounted(client, children["federated"], params, companies)
    else:
        assert params["dp_epsilon_target"] == params["dp_noise_multiplier"] == "None", params
        assert not [key for key in federated if key.startswith("dp.")], "DP metrics of a run without DP"
    if execution.variant == "flower":
        plain = execution.upstream[TEMPLATE]
        _, plain_children = parent_and_children(client, plain.experiment_name, TEMPLATE)
        assert_same_numbers(client, plain_children["federated"], children["federated"], companies)


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


def mlp_shapes(params: dict) -> dict[str, list[int]]:
    """The shapes of the MLP's weights, built from the logged parameters (not from the notebook)."""
    features, hidden = len(params["features"].split(",")), int(params["hidden"])
    return {
        "0.weight": [hidden, features],
        "0.bias": [hidden],
        "2.weight": [hidden, hidden],
        "2.bias": [hidden],
        "4.weight": [1, hidden],
        "4.bias": [1],
    }


def assert_only_weights_crossed(messages: list, params: dict, companies: list) -> None:
    """Every message is weights of the MLP's shapes (built here from the logged parameters), or a reply of
    exactly (weights, int) to fit and ({auc, loss}, int) to evaluate; four per company and round."""
    shapes = mlp_shapes(params)
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


def assert_only_weights_crossed_in_flower(messages: list, params: dict, companies: list) -> None:
    """Flower's messages: to a client the weights of the MLP's shapes and the round; from it weights and a
    count (train), named scores and a count (evaluate); and before round 1 a query answered with exactly
    the company's name. Four per company and round, two per company before."""
    shapes = mlp_shapes(params)
    weights = {
        "arrays": {"dict": {key: {"tensor": shape, "dtype": "float32"} for key, shape in shapes.items()}}
    }
    for message in messages:
        content, kind, round_ = message["content"], message["kind"], message["round"]
        if kind == "query":
            if message["direction"] == "to client":
                assert content == {"config": {"config": {}}}, message
            else:
                assert content == {"config": {"config": {"company": {"str": message["client"]}}}}, message
            continue
        if message["direction"] == "to client":
            assert content == {"arrays": weights, "config": {"config": {"server-round": {"int": round_}}}}, (
                message
            )
            continue
        metrics = content["metrics"]["metrics"]
        count = metrics.pop("num-examples")
        assert list(count) == ["int"] and count["int"] > 0, message
        if kind == "train":
            assert set(content) == {"arrays", "metrics"} and content["arrays"] == weights, message
            assert metrics == {}, message
        else:
            assert set(content) == {"metrics"} and set(metrics) == {"auc", "loss"}, message
            assert all(list(value) == ["float"] for value in metrics.values()), message
    rounds = int(params["rounds"])
    seen = sorted((m["round"], m["client"], m["direction"], m["kind"]) for m in messages)
    expected = sorted(
        [(0, name, direction, "query") for name in companies for direction in ("to client", "to server")]
        + [
            (r, name, direction, kind)
            for r in range(1, rounds + 1)
            for name in companies
            for direction in ("to client", "to server")
            for kind in ("train", "evaluate")
        ]
    )
    assert seen == expected


def assert_same_numbers(client, plain, flower, companies: list) -> None:
    """The Flower run's federated model is the plain run's: each company's validation AUC in every round,
    and every test AUC, within FLOWER_TOLERANCE."""
    for key in [f"val_auc.{name}" for name in companies] + ["val_auc.macro"]:
        ours = {m.step: m.value for m in client.get_metric_history(flower.info.run_id, key)}
        theirs = {m.step: m.value for m in client.get_metric_history(plain.info.run_id, key)}
        assert sorted(ours) == sorted(theirs), key
        apart = {
            step: ours[step] - theirs[step]
            for step in ours
            if abs(ours[step] - theirs[step]) > FLOWER_TOLERANCE
        }
        assert not apart, f"{key}: Flower and plain differ in rounds {apart}"
    for key, value in plain.data.metrics.items():
        if key.startswith("test_auc."):
            assert flower.data.metrics[key] == pytest.approx(value, abs=FLOWER_TOLERANCE), key
    assert flower.data.metrics["chosen_step"] == plain.data.metrics["chosen_step"]


def assert_privacy_accounted(client, federated, params: dict, companies: list) -> None:
    """Each company's ε after each round, recomputed with Opacus's RDP accountant from the logged noise
    multiplier, sampling rate and steps, is what the run logged; the last is at most the target."""
    from opacus.accountants import RDPAccountant  # here only: the other checks do not need it

    metrics, rounds = federated.data.metrics, int(params["rounds"])
    target, delta = float(params["dp_epsilon_target"]), float(params["dp_delta"])
    assert metrics["dp.delta"] == delta, metrics["dp.delta"]
    for name in companies:
        sigma, rate = metrics[f"dp.noise_multiplier.{name}"], metrics[f"dp.sample_rate.{name}"]
        steps = metrics[f"dp.steps.{name}"]
        # Opacus's Poisson sampling: 1 / rate steps per epoch, local_epochs epochs per round.
        assert steps == rounds * int(params["local_epochs"]) * round(1 / rate), (name, steps, rate)
        history = {
            m.step: m.value for m in client.get_metric_history(federated.info.run_id, f"dp.epsilon.{name}")
        }
        assert sorted(history) == list(range(1, rounds + 1)), name
        for step, logged in history.items():
            accountant = RDPAccountant()
            accountant.history = [(sigma, rate, int(steps * step / rounds))]
            assert logged == pytest.approx(accountant.get_epsilon(delta), rel=1e-9), (name, step)
        spent = [history[step] for step in sorted(history)]
        assert spent == sorted(spent), f"{name}: ε fell in some round"
        assert 0 < history[rounds] <= target, f"{name} spent ε {history[rounds]}, the target was {target}"
