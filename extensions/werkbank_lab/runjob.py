"""Runs inside a ``werkbank submit`` job: execute the notebook with papermill, record how it ended.

``python -m werkbank_lab.runjob SPEC`` where SPEC is the JSON file ``werkbank submit`` wrote.
The executed notebook lands next to the input as ``<name>-<job id>.ipynb``; the kernel inherits
the job's environment, so ``SLURM_JOB_ID`` reaches the notebook's MLflow tags
(:func:`werkbank_lab.tracking.session_tags`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from werkbank_core import slurm
from werkbank_lab.batch import jobs_dir, one_line


def write_status(job_id: str, **status) -> None:
    path = jobs_dir() / f"{job_id}.status.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"job_id": job_id, "finished": time.time(), **status}, indent=1))
    tmp.replace(path)  # a reader never sees half a file


def output_path(spec: dict, job_id: str) -> Path:
    """Where this job's result goes: the executed notebook, or a training script's log.

    The name is ``werkbank submit``'s (``Submission.output_for``), with ``%j`` for the job id.
    """
    return Path(spec["output"].replace("%j", job_id))


def rendezvous_address(nodelist: str) -> str:
    """The first node's address (Slurm's NodeAddr): its name may not resolve on the other nodes."""
    return slurm.node_address(nodelist)


def torchrun_argv(spec: dict, job_id: str, environ: dict[str, str]) -> list[str]:
    """``torchrun`` for this node: standalone on one node, c10d rendezvous at the first node's address."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spec['procs_per_node']}"]
    if spec["nodes"] == 1:
        argv.append("--standalone")
    else:
        # A port per job, so two jobs whose first node is the same do not meet at one rendezvous.
        port = 20000 + int(job_id) % 10000 if job_id.isdigit() else 29500
        address = rendezvous_address(environ["SLURM_JOB_NODELIST"])
        argv += [
            f"--nnodes={spec['nodes']}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={address}:{port}",
            f"--rdzv-id={job_id}",
        ]
    return [*argv, spec["notebook"], *spec["args"]]


def run_distributed(spec: dict, job_id: str) -> int:
    """One of these per node (srun); node 0 records how the job ended."""
    first = os.environ.get("SLURM_NODEID", "0") == "0"
    argv = torchrun_argv(spec, job_id, dict(os.environ))
    print(f"werkbank: job {job_id} node {os.environ.get('SLURM_NODEID', '0')}: {argv}", flush=True)
    returncode = subprocess.run(argv, cwd=Path(spec["notebook"]).parent, check=False).returncode
    if first:
        output = output_path(spec, job_id)
        if returncode == 0:
            write_status(job_id, state="COMPLETED", output=str(output))
        else:
            write_status(
                job_id, state="FAILED", output=str(output), error=f"torchrun exit status {returncode}"
            )
    return returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    job_id = os.environ.get("SLURM_JOB_ID", "local")
    if spec.get("procs_per_node"):
        return run_distributed(spec, job_id)
    notebook = Path(spec["notebook"])
    output = output_path(spec, job_id)

    def on_term(signum, frame):
        # scancel or the walltime end: say so before Slurm kills the job for good.
        write_status(
            job_id, state="CANCELLED", output=str(output), error="ended by Slurm (scancel or walltime)"
        )
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    print(f"werkbank: job {job_id} runs {notebook} → {output}", flush=True)

    import papermill

    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=spec["parameters"],
            # werkbank submit chose it (the notebook's, or the session's for one that names none).
            kernel_name=spec.get("kernel") or None,
            language=spec.get("language") or None,
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=True,
        )
    except papermill.PapermillExecutionError as e:
        error = one_line(f"cell {e.exec_count}: {e.ename}: {e.evalue}")
        write_status(job_id, state="FAILED", output=str(output), error=error)
        print(f"werkbank: the notebook failed in {error}", flush=True)
        return 1
    except Exception as e:  # recorded for `werkbank jobs`, then re-raised
        write_status(job_id, state="FAILED", output=str(output), error=one_line(f"{type(e).__name__}: {e}"))
        raise
    write_status(job_id, state="COMPLETED", output=str(output))
    print(f"werkbank: done, executed notebook: {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
