"""07-distributed: a DDP script run by torchrun with two processes, tracked in one MLflow run, and the same
training in one process on the same global batches; DDP must have averaged the gradients.

The claim is checked here from the weights both runs logged: the ranks ended equal (the script's
``rank_max_abs_diff``, from an ``all_gather``), and DDP's weights equal the single process's up to float32
rounding (recomputed here, not read from the notebook's metric alone).
"""

import getpass
import tempfile

import torch
from mlflow.entities import Run

import werkbank_lab
from tests.notebooks.lifecycle import Execution, runs_in

NEEDS: tuple[str, ...] = ()

SMOKE_MIN_ACCURACY = 0.85  # the notebook's min_accuracy at the smoke size
TOLERANCE = 1e-4  # the notebook's default tolerance: DDP vs one process, largest absolute difference


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"size": "smoke"}


def final_weights(execution: Execution, run: Run) -> dict[str, torch.Tensor]:
    """The weights ``run`` logged at its end (the model's state_dict)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = execution.client.download_artifacts(run.info.run_id, "weights.pt", scratch)
        return torch.load(path, weights_only=True)


def check(execution: Execution) -> None:
    runs = {run.data.params["mode"]: run for run in runs_in(execution.client, execution.experiment_name)}
    assert sorted(runs) == ["ddp", "single-process"], sorted(runs)
    for run in runs.values():
        tags = run.data.tags
        assert run.info.status == "FINISHED", run.info.status
        assert tags["werkbank.template"] == execution.name and tags["werkbank.user"] == getpass.getuser()
        assert tags["werkbank.version"] == werkbank_lab.__version__  # templates.run_tags in the script
    ddp, single = runs["ddp"], runs["single-process"]
    params, metrics = ddp.data.params, ddp.data.metrics
    assert params["world_size"] == "2" and params["backend"] == "gloo" and params["nodes"] == "1"
    assert single.data.params["world_size"] == "1" and single.data.params["backend"] == "none"
    assert single.data.params["global_batch_size"] == params["global_batch_size"] == "128"
    assert ddp.data.tags["werkbank.single_process_run"] == single.info.run_id

    # DDP averaged the gradients: the ranks ended with the same weights, and with one process's.
    assert metrics["rank_max_abs_diff"] == 0.0, metrics["rank_max_abs_diff"]
    ddp_weights, single_weights = final_weights(execution, ddp), final_weights(execution, single)
    assert ddp_weights.keys() == single_weights.keys()
    difference = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in ddp_weights)
    assert difference == metrics["max_abs_diff_vs_single_process"]
    assert float(params["tolerance_vs_single_process"]) == TOLERANCE
    assert difference <= TOLERANCE, difference
    assert metrics["test_accuracy"] >= SMOKE_MIN_ACCURACY, metrics["test_accuracy"]

    history = execution.client.get_metric_history(ddp.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(int(params["epochs"])))
    assert history[-1].value < history[0].value
    # The script the notebook wrote is next to it, and nothing else but papermill's output.
    written = sorted(p.name for p in execution.workdir.iterdir())
    assert written == ["executed-distributed.ipynb", "train_ddp.py"], written
