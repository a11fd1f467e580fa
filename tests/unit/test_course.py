"""The course file (werkbank_spawner.workshop.course): shape, rules, the check command."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import pytest

from werkbank_spawner.site import SiteConfigError
from werkbank_spawner.site.load import load
from werkbank_spawner.workshop.cli import main
from werkbank_spawner.workshop.course import Course, validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "course.example.yaml"


def course(**changes) -> dict:
    base = {
        "name": "intro-ml",
        "trainers": ["alice"],
        "participants": 5,
        "starts": "2027-01-20T13:00",
        "ends": "2027-01-20T18:00",
    }
    return {**copy.deepcopy(base), **changes}


def error_of(data: dict) -> SiteConfigError:
    with pytest.raises(SiteConfigError) as info:
        validate(data)
    return info.value


def test_the_example_course_file_is_valid():
    example = validate(load(EXAMPLE))
    assert example.name == "llm-finetuning-2027-01"
    assert example.group == "course-llm-finetuning-2027-01"
    assert example.account_names()[:2] == ("llm01", "llm02") and len(example.account_names()) == 30
    assert (example.starts, example.ends) == (datetime(2027, 1, 20, 13), datetime(2027, 1, 20, 18))
    assert example.material.repo == "/srv/courses/llm-finetuning.git"
    assert (example.profile.gpus, example.profile.walltime) == (1, "3h")


def test_defaults_and_a_frozen_course():
    minimal = validate(course())
    assert (minimal.accounts, minimal.login) == ("pool", "event-code")
    assert minimal.account_names() == ("intro01", "intro02", "intro03", "intro04", "intro05")
    assert minimal.material is None and minimal.reservation is False
    with pytest.raises(ValueError):
        minimal.name = "other"
    assert isinstance(minimal, Course)


def test_existing_accounts_go_with_a_sheet():
    listed = validate(course(participants=["bob", "carol"], accounts="existing", login="sheet"))
    assert listed.account_names() == ("bob", "carol")
    assert error_of(course(participants=["bob"], accounts="existing")).path == "login"  # event-code
    assert error_of(course(participants=["bob"], login="sheet")).path == "accounts"  # pool + a list
    assert error_of(course(participants=3, accounts="existing", login="sheet")).path == "accounts"


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"name": "Intro ML"}, "name", "lower-case"),
        ({"name": "ab"}, "name", "3 to 40"),
        ({"trainers": []}, "trainers", "at least one"),
        ({"trainers": ["Alice Smith"]}, "trainers[0]", "not a valid user name"),
        ({"participants": 0}, "participants", "from 1 to 200"),
        ({"participants": 500}, "participants", "from 1 to 200"),
        ({"participants": True}, "participants", "a number of participants"),
        ({"participants": ["bob", "bob"], "accounts": "existing", "login": "sheet"}, "participants", "twice"),
        (
            {"participants": ["bob", "x y"], "accounts": "existing", "login": "sheet"},
            "participants[1]",
            "user name",
        ),
        (
            {"participants": ["alice"], "accounts": "existing", "login": "sheet"},
            "trainers",
            "also a participant",
        ),
        ({"account_prefix": "Train"}, "account_prefix", "not a valid user name"),
        ({"ends": "2027-01-20T12:00"}, "ends", "not after starts"),
        ({"ends": "2027-03-20T12:00"}, "ends", "at most 14 days"),
        ({"starts": "tomorrow"}, "starts", "a date and time like"),
        ({"ends": "2027-01-20T18:00+01:00"}, "ends", "with a zone, or neither"),
        ({"profile": {"gpus": 99}}, "profile.gpus", "out of range"),
        ({"profile": {"memory": "lots"}}, "profile.memory", "a size like 16G"),
        ({"profile": {"walltime": "forever"}}, "profile.walltime", "a time like"),
        ({"profile": {"partition": "gpu; id"}}, "profile.partition", "not a valid name"),
        ({"profile": {"gpu": 1}}, "profile.gpu", "unknown key"),
        ({"material": {"repo": "not a repo"}}, "material.repo", "a path (/...) or a git URL"),
        ({"material": {"branch": "main"}}, "material.repo", "required"),
        ({"material": {"repo": "/srv/x.git", "branch": "../etc"}}, "material.branch", "not a branch name"),
        ({"idle_timeout": "never"}, "idle_timeout", "a time like"),
        ({"login": "password"}, "login", "not one of: event-code, sheet"),
        ({"reservation": "yes"}, "reservation", "true or false"),
        ({"trainer": ["alice"]}, "trainer", "unknown key"),
    ],
)
def test_a_bad_course_is_refused_naming_the_key(changes, path, words):
    error = error_of(course(**changes))
    assert error.path == path
    assert words in error.message, error.message


def test_required_keys():
    for key in ("name", "trainers", "participants", "starts", "ends"):
        data = course()
        del data[key]
        assert (error_of(data).path, error_of(data).message) == (key, "required")


def test_check_command(tmp_path, capsys):
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {EXAMPLE}: course llm-finetuning-2027-01, 30 participants (llm01..)")
    bad = tmp_path / "course.yaml"
    bad.write_text(
        "name: intro-ml\ntrainers: [alice]\nparticipants: 5\n"
        "starts: 2027-01-20T13:00\nends: 2027-01-20T12:00\n"
    )
    assert main(["check", str(bad)]) == 1
    assert capsys.readouterr().err.startswith("FATAL: ends: 2027-01-20T12:00:00 is not after starts")
    duplicate = tmp_path / "twice.yaml"
    duplicate.write_text("name: a\nname: b\n")
    assert main(["check", str(duplicate)]) == 1
    assert "duplicate key 'name'" in capsys.readouterr().err
