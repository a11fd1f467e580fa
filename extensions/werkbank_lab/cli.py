"""The ``werkbank`` command in a session: submit notebooks as Slurm jobs, list and cancel them.

werkbank profiles
werkbank submit training.ipynb -p epochs 20 -p learning_rate 0.01 --profile gpu1
werkbank jobs
werkbank cancel 1234
"""

from __future__ import annotations

import argparse
import sys

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
        help="a value for the notebook's parameters cell (converted to the declared type)",
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
        if args.command == "profiles":
            for profile in batch.session_policy().profiles:
                print(f"{profile.name:<12} {profile.label}")
        elif args.command == "submit":
            resources = {flag: getattr(args, flag) for flag in RESOURCE_FLAGS}
            if args.notebook.endswith(".py"):
                if args.parameter:
                    raise batch.SubmitError("-p is for notebooks; give a script its arguments after --")
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
                    raise batch.SubmitError(
                        "--nodes, --procs-per-node and arguments are for training scripts"
                    )
                parameters = dict(args.parameter)
                if len(parameters) != len(args.parameter):
                    raise batch.SubmitError("a parameter is given twice")
                sub = batch.prepare(args.notebook, parameters, profile=args.profile, **resources)
            job_id = batch.submit(sub)
            print(f"Submitted job {job_id}: {sub.describe()}")
            if not sub.distributed:
                print(f"Executed notebook: {sub.output_for(job_id)}")
            print(f"Log: {sub.log_pattern.replace('%j', job_id)}")
        elif args.command == "jobs":
            views = batch.list_jobs()
            if not views:
                print("No notebook jobs.")
            for view in views:
                detail = f"  ({view.detail})" if view.detail else ""
                print(f"{view.job_id:>8}  {view.state:<10} {view.notebook}{detail}")
        elif args.command == "cancel":
            batch.cancel(args.job_id)
            print(f"Cancelled job {args.job_id}.")
    except batch.SubmitError as e:
        print(f"werkbank {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
