"""werkbank_spawner.slurm's synchronous side (sessions, jobs, template 01): small shell scripts
stand in for squeue and scontrol; the real commands are exercised in tests/integration."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from werkbank_spawner import slurm


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
