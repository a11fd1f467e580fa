"""``werkbank-site check FILE``, ``werkbank-site defaults`` and ``werkbank-site link``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from traitlets.config import Config

from .apply import apply
from .links import launch_link
from .load import load, validate
from .reference import render_defaults
from .schema import SiteConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Check a site file (as the hub would at start, without starting anything) or print the
    reference of every key. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="werkbank-site", description="Check werkbank's site file or print its reference."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a site file without starting anything")
    check.add_argument("file", help="the site file, e.g. hub_config/site.yaml")
    commands.add_parser("defaults", help="print every key, its default and meaning as YAML")
    link = commands.add_parser(
        "link", help="print a launch link: log in, start a server with a profile, open a template"
    )
    link.add_argument("file", help="the site file")
    link.add_argument("--profile", required=True, help="the profile the server starts with, e.g. gpu1")
    target = link.add_mutually_exclusive_group()
    target.add_argument("--template", default="", help="a template to copy and open, e.g. 03-training")
    target.add_argument("--path", default="", help="a notebook in the user's home to open")
    target.add_argument(
        "--dashboard", default="", help="a notebook in the user's home to open as a dashboard"
    )
    args = parser.parse_args(argv)

    if args.command == "defaults":
        sys.stdout.write(render_defaults())
        return 0
    if args.command == "link":
        try:
            print(
                launch_link(
                    validate(load(args.file)),
                    args.profile,
                    template=args.template,
                    path=args.path,
                    dashboard=args.dashboard,
                )
            )
        except SiteConfigError as e:
            print(f"FATAL: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        site = validate(load(args.file))
        apply(Config(), site, config_dir=Path(args.file).resolve().parent)
    except SiteConfigError as e:
        print(f"FATAL: {e}", file=sys.stderr)
        return 1
    if site.hub.spawner == "local":
        print(
            "note: hub.spawner is local: servers run as processes on the hub machine, not as Slurm jobs",
            file=sys.stderr,
        )
    print(f"ok: {args.file}")
    return 0
