"""The ``werkbank`` command in a session: submit notebooks as Slurm jobs, list and cancel them.

werkbank profiles
werkbank submit training.ipynb -p epochs 20 -p learning_rate 0.01 --profile gpu1
werkbank submit report.ipynb -f params.yaml -r run_name 007
werkbank jobs
werkbank cancel 1234
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from werkbank_lab import batch

RESOURCE_FLAGS = ("gpus", "cpus", "memory", "walltime", "partition", "account")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="werkbank", description="Notebooks as Slurm batch jobs.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("profiles", help="the profiles you may submit with")

    submit = commands.add_parser(
        "submit",
        help="run a notebook with papermill in a Slurm job",
        description="Run NOTEBOOK with papermill in a Slurm job; the executed notebook is written next "
        "to it as NAME-<jobid>.ipynb. A training script (.py) runs under torchrun on --nodes nodes; "
        "its own arguments follow --.",
    )
    submit.add_argument(
        "notebook", help="a notebook (.ipynb), or a PyTorch training script (.py) for torchrun"
    )
    submit.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a value for the notebook's parameters cell, read as papermill -p reads it: as the "
        "declared type, else a number, True, False or None where it is one, else text",
    )
    submit.add_argument(
        "-r",
        "--parameter-raw",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a value taken as text, whatever it looks like",
    )
    submit.add_argument(
        "-f",
        "--parameters-file",
        metavar="FILE",
        help="a YAML file of name: value (typed as YAML types them)",
    )
    submit.add_argument(
        "-k", "--kernel", help="the kernel to run the notebook with; default: the notebook's, else python3"
    )
    submit.add_argument("--profile", help="resource profile (see `werkbank profiles`); default: the first")
    for flag in RESOURCE_FLAGS:
        submit.add_argument(f"--{flag}", help=f"{flag} instead of the profile's, where the site allows it")
    submit.add_argument("--gpus-per-node", dest="gpus", help="the same as --gpus (resources are per node)")
    submit.add_argument("--nodes", help="training script: nodes for torchrun (default 1)")
    submit.add_argument(
        "--procs-per-node", help="training script: processes per node (default: one per GPU, or 1 on CPU)"
    )

    commands.add_parser("jobs", help="your notebook jobs and their state")

    cancel = commands.add_parser("cancel", help="cancel a notebook job")
    cancel.add_argument("job_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after "--" belongs to the training script (argparse would take it for options).
    script_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.args = script_args
    try:
        COMMANDS[args.command](args)
    except batch.SubmitError as e:
        print(f"werkbank {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an unforeseen refusal: one line, the traceback on request
        if os.environ.get("WERKBANK_DEBUG"):
            raise
        text = batch.one_line(e)
        print(
            f"werkbank {args.command}: {type(e).__name__}: {text} (WERKBANK_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


def profiles(args: argparse.Namespace) -> None:
    for profile in batch.session_policy().profiles:
        print(f"{profile.name:<12} {profile.label}")


def submit(args: argparse.Namespace) -> None:
    resources = {flag: getattr(args, flag) for flag in RESOURCE_FLAGS}
    if args.notebook.endswith(".py"):
        if args.parameter or args.parameter_raw or args.parameters_file or args.kernel:
            raise batch.SubmitError(
                "-p, -r, -f and --kernel are for notebooks; give a script its arguments after --"
            )
        sub = batch.prepare_distributed(
            args.notebook,
            args.args,
            nodes=args.nodes or 1,
            procs_per_node=args.procs_per_node,
            profile=args.profile,
            **resources,
        )
    else:
        if args.nodes or args.procs_per_node or args.args:
            raise batch.SubmitError("--nodes, --procs-per-node and arguments are for training scripts")
        parameters, raw = notebook_values(args)
        sub = batch.prepare(
            args.notebook, parameters, raw=raw, kernel=args.kernel, profile=args.profile, **resources
        )
    job_id = batch.submit(sub)
    print(f"Submitted job {job_id}: {sub.describe()}")
    if not sub.distributed:
        print(f"Executed notebook: {sub.output_for(job_id)}")
    print(f"Log: {sub.log_for(job_id)}")


def notebook_values(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, object]]:
    """``-p`` values (to convert) and values taken as given (``-f``'s YAML, ``-r``), with
    papermill's precedence: the file, then ``-p``, then ``-r``. A name twice on the command line
    is refused (which one was meant?)."""
    names = [name for name, _ in (*args.parameter, *args.parameter_raw)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise batch.SubmitError(f"parameter {twice[0]!r} is given twice")
    raw = read_parameters_file(args.parameters_file) if args.parameters_file else {}
    parameters = dict(args.parameter)
    for name in parameters:
        raw.pop(name, None)
    raw.update(args.parameter_raw)
    return parameters, raw


def read_parameters_file(path: str) -> dict[str, object]:
    import yaml

    try:
        values = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise batch.SubmitError(
            f"{path}: cannot read it ({e.strerror if isinstance(e, OSError) else e})"
        ) from None
    except yaml.YAMLError as e:
        raise batch.SubmitError(f"{path}: not YAML ({batch.one_line(e, 200)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise batch.SubmitError(f"{path}: expected name: value lines (a YAML mapping)")
    return values


def jobs(args: argparse.Namespace) -> None:
    views = batch.list_jobs()
    if not views:
        print("No notebook jobs.")
    for view in views:
        detail = f"  ({view.detail})" if view.detail else ""
        log = (
            f"  log: {view.log}" if view.log and view.state not in ("PENDING", "RUNNING", "COMPLETED") else ""
        )
        print(f"{view.job_id:>8}  {view.state:<10} {view.notebook}{detail}{log}")


def cancel(args: argparse.Namespace) -> None:
    batch.cancel(args.job_id)
    print(f"Cancelled job {args.job_id}.")


COMMANDS = {"profiles": profiles, "submit": submit, "jobs": jobs, "cancel": cancel}


if __name__ == "__main__":
    sys.exit(main())
