"""07-distributed: a DDP script run by torchrun with several processes, tracked in one MLflow run."""

from tests.notebooks.lifecycle import Execution, the_run

NEEDS: tuple[str, ...] = ()


def smoke(upstream: dict[str, Execution]) -> dict:
    return {"procs": 2, "epochs": 8, "min_accuracy": 0.85}


def check(execution: Execution) -> None:
    run = the_run(execution)
    params, metrics = run.data.params, run.data.metrics
    assert params["world_size"] == "2" and params["backend"] == "gloo" and params["nodes"] == "1"
    assert metrics["test_accuracy"] >= execution.parameters["min_accuracy"]
    history = execution.client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(execution.parameters["epochs"]))
    assert history[-1].value < history[0].value
    # The script the notebook wrote is next to it, and nothing else but papermill's output.
    written = sorted(p.name for p in execution.workdir.iterdir())
    assert written == ["executed-distributed.ipynb", "train_ddp.py"], written
