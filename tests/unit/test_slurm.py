"""werkbank_core.slurm's synchronous side (sessions, jobs, template 01): small shell scripts
stand in for squeue and scontrol; the real commands are exercised in tests/integration."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from werkbank_core import slurm


def command(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_rows_have_exactly_the_fields_asked_for():
    out = "12|RUNNING|None|node1\n13|PENDING|Priority\n\n14|RUNNING|a|b|c\n"
    assert slurm.rows(out, 4) == [
        ["12", "RUNNING", "None", "node1"],
        ["13", "PENDING", "Priority", ""],
        ["14", "RUNNING", "a", "b|c"],  # the last field keeps what follows
    ]


def test_time_left_is_what_squeue_prints(tmp_path):
    squeue = command(tmp_path, "squeue", 'echo "$@" > "$0.args"; echo " 1-02:03:04"\n')
    assert slurm.time_left("41", squeue=squeue) == "1-02:03:04"
    assert Path(squeue + ".args").read_text().split() == ["--noheader", "--jobs", "41", "--format", "%L"]
    assert slurm.parse_time("1-02:03:04") == 93784
    assert slurm.parse_time("UNLIMITED") is None
    gone = command(tmp_path, "squeue-gone", "exit 0\n")
    assert slurm.time_left("41", squeue=gone) == ""
    down = command(
        tmp_path, "squeue-down", "echo 'squeue: error: Unable to contact slurm controller' >&2; exit 1\n"
    )
    with pytest.raises(slurm.SlurmCommandError, match="Unable to contact slurm controller"):
        slurm.time_left("41", squeue=down)


def test_a_synchronous_command_is_bounded_and_named(tmp_path):
    hung = command(tmp_path, "squeue", "exec sleep 600\n")
    with pytest.raises(slurm.SlurmCommandError, match=r"^squeue did not answer in 0.3 s$"):
        slurm.run_sync([hung], timeout=0.3)
    with pytest.raises(
        slurm.SlurmCommandError, match=r"^sbatch could not be run: No such file or directory$"
    ):
        slurm.run_sync([str(tmp_path / "missing" / "sbatch")])
    cat = command(tmp_path, "sbatch", "cat\n")
    assert slurm.run_sync([cat], stdin="#!/bin/sh\necho hi\n").check() == "#!/bin/sh\necho hi\n"


def test_the_first_nodes_address_comes_from_slurm(tmp_path):
    scontrol = command(
        tmp_path,
        "scontrol",
        'case "$*" in\n'
        '  "show hostnames node[1-3]") printf "node1\\nnode2\\nnode3\\n" ;;\n'
        '  "--oneliner show node node1") echo "NodeName=node1 NodeAddr=10.0.0.7 NodeHostName=n1" ;;\n'
        "  *) exit 1 ;;\n"
        "esac\n",
    )
    assert slurm.node_address("node[1-3]", scontrol=scontrol) == "10.0.0.7"
    with pytest.raises(slurm.SlurmCommandError):
        slurm.node_address("other[1-2]", scontrol=scontrol)


def test_node_lists_are_expanded_by_slurm_itself(tmp_path):
    """The hub's spawner asks ``scontrol show hostnames`` for any list or range (zero padding,
    several ranges); a plain name needs no command at all."""
    calls = tmp_path / "calls"
    scontrol = command(
        tmp_path,
        "scontrol",
        f'echo "$*" >>{calls}\n'
        'case "$*" in\n'
        '  "show hostnames gpu[07-09,11],cpu1") printf "gpu07\\ngpu08\\ngpu09\\ngpu11\\ncpu1\\n" ;;\n'
        '  "show hostnames empty[1]") ;;\n'
        '  *) echo "scontrol: error: Invalid node list" >&2; exit 1 ;;\n'
        "esac\n",
    )
    names = asyncio.run(slurm.hostnames("gpu[07-09,11],cpu1", scontrol=[scontrol]))
    assert names == ["gpu07", "gpu08", "gpu09", "gpu11", "cpu1"]
    assert asyncio.run(slurm.hostnames("node1", scontrol=[scontrol])) == ["node1"]
    assert calls.read_text().splitlines() == ["show hostnames gpu[07-09,11],cpu1"]
    with pytest.raises(slurm.SlurmCommandError, match="no node in 'empty"):
        asyncio.run(slurm.hostnames("empty[1]", scontrol=scontrol))
    with pytest.raises(slurm.SlurmCommandError, match="Invalid node list"):
        asyncio.run(slurm.hostnames("bad[", scontrol=scontrol))
