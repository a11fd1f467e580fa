"""Tracking overhead in a training loop: bare, naive per-step ``mlflow.log_metric``, and
werkbank's :class:`~werkbank_lab.tracking.MetricLogger`, measured in the same run.

    /opt/werkbank/venv/bin/python benchmarks/tracking_overhead.py [--steps 2000] [--rounds 5]

Starts its own MLflow server (SQLite, loopback) unless ``--tracking-uri`` is given. The loop is
a small PyTorch MLP on CPU (CUDA when present) logging loss and accuracy every step. Bare and
werkbank runs alternate over ``--rounds`` rounds; the naive variant runs once on fewer steps
(each call is a blocking HTTP request). Prints median step times and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mlflow_server import MlflowServer  # noqa: E402
from werkbank_lab.tracking import MetricLogger  # noqa: E402


def make_model(device, width: int, batch: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, width, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, optimizer, x, y


def train(steps: int, device, log_step, width: int = 512, batch: int = 128) -> float:
    """Run ``steps`` training steps, calling ``log_step(step, loss, accuracy)``; return s/step."""
    model, optimizer, x, y = make_model(device, width, batch)
    started = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        # .item() synchronises with the device, as real logging code does.
        log_step(step, loss.item(), (out.argmax(1) == y).float().mean().item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def new_run(client: MlflowClient, experiment_id: str) -> str:
    return client.create_run(experiment_id).info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--naive-steps", type=int, default=50)
    parser.add_argument(
        "--width", type=int, default=512, help="MLP width (a step of ~10-20 ms on one CPU core)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tracking-uri", default="")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # steady step times on a shared 2-core machine
    cpus = sorted(os.sched_getaffinity(0))
    # The tracking server normally runs on the hub, not on the compute node: keep it off the
    # core the training loop (and the logger's thread) run on, when there are two.
    server_cpus = set(cpus[1:]) if len(cpus) > 1 else None
    if server_cpus:
        os.sched_setaffinity(0, {cpus[0]})

    server = None
    uri = args.tracking_uri
    if not uri:
        server = MlflowServer(Path(tempfile.mkdtemp(prefix="werkbank-tracking-bench-")), cpus=server_cpus)
        print("starting mlflow server ...", flush=True)
        server.start()
        uri = server.url
    try:
        client = MlflowClient(uri)
        experiment_id = client.create_experiment(f"tracking-overhead-{int(time.time())}")
        shape = {"width": args.width, "batch": args.batch}
        train(50, device, lambda *a: None, **shape)  # warm-up

        def bare_round():
            bare.append(train(args.steps, device, lambda *a: None, **shape))

        def werkbank_round():
            run_id = new_run(client, experiment_id)
            with MetricLogger(run_id, tracking_uri=uri, spool_dir=tempfile.mkdtemp()) as logger:
                started = time.perf_counter()
                logged.append(
                    train(
                        args.steps,
                        device,
                        lambda s, loss, acc: logger.log_metrics({"loss": loss, "acc": acc}, s),
                        **shape,
                    )
                )
            delivered.append(time.perf_counter() - started)
            assert len(client.get_metric_history(run_id, "loss")) == args.steps

        bare, logged, delivered = [], [], []
        for i in range(args.rounds):
            # Alternate the order so that drift (thermal, other load) does not favour one side.
            for variant in (bare_round, werkbank_round) if i % 2 == 0 else (werkbank_round, bare_round):
                variant()

        mlflow.set_tracking_uri(uri)
        run_id = new_run(client, experiment_id)
        with mlflow.start_run(run_id=run_id):

            def naive_step(step, loss, acc):
                mlflow.log_metric("loss", loss, step=step)
                mlflow.log_metric("acc", acc, step=step)

            naive = train(args.naive_steps, device, naive_step, **shape)
    finally:
        if server:
            server.stop()

    b, w = statistics.median(bare), statistics.median(logged)
    print(f"\nTracking overhead, {device.type}, {args.steps} steps x {args.rounds} rounds (2 metrics/step)")
    print(f"  bare loop                 {b * 1e3:8.3f} ms/step")
    print(f"  werkbank MetricLogger     {w * 1e3:8.3f} ms/step   {w / b:6.3f}x bare")
    print(f"  naive mlflow.log_metric   {naive * 1e3:8.3f} ms/step   {naive / b:6.2f}x bare", end="")
    print(f"  ({args.naive_steps} steps)")
    total = statistics.median(delivered)
    print(f"  werkbank: loop + delivery of all {2 * args.steps} values: median {total:.2f} s")
    print("  per round, bare ms/step:     " + " ".join(f"{x * 1e3:.3f}" for x in bare))
    print("  per round, werkbank ms/step: " + " ".join(f"{x * 1e3:.3f}" for x in logged))
    print(f"  (training pinned to CPU {cpus[0]}, MLflow server to {sorted(server_cpus or [])})")


if __name__ == "__main__":
    main()
