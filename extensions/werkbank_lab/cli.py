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
        "to it as NAME-<jobid>.ipynb.",
    )
    submit.add_argument("notebook")
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

    commands.add_parser("jobs", help="your notebook jobs and their state")

    cancel = commands.add_parser("cancel", help="cancel a notebook job")
    cancel.add_argument("job_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "profiles":
            for profile in batch.session_policy().profiles:
                print(f"{profile.name:<12} {profile.label}")
        elif args.command == "submit":
            parameters = dict(args.parameter)
            if len(parameters) != len(args.parameter):
                raise batch.SubmitError("a parameter is given twice")
            sub = batch.prepare(
                args.notebook,
                parameters,
                profile=args.profile,
                **{flag: getattr(args, flag) for flag in RESOURCE_FLAGS},
            )
            job_id = batch.submit(sub)
            print(f"Submitted job {job_id}: {sub.request.describe()}")
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
