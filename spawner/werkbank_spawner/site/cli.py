"""``werkbank-site check FILE`` and ``werkbank-site defaults``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from traitlets.config import Config

from .apply import apply
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
    args = parser.parse_args(argv)

    if args.command == "defaults":
        sys.stdout.write(render_defaults())
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
