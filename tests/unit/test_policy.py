"""Validation of user options against profiles and limits (pure, no hub, no Slurm)."""

import pytest

from werkbank_core.policy import (
    PolicyError,
    format_walltime,
    parse_memory,
    parse_walltime,
    policy_from_dict,
)

SITE = {
    "profiles": [
        {"name": "cpu", "partition": "cpu", "cpus": 1, "memory": "2G", "walltime": "01:00:00"},
        {"name": "gpu1", "partition": "gpu", "gpus": 1, "cpus": 4, "memory": "16G", "walltime": "4h"},
        {"name": "fullnode", "partition": "gpu", "gpus": 2, "cpus": 16, "memory": "60G", "walltime": "8h"},
        {"name": "staff", "partition": "cpu", "groups": ["staff"]},
    ],
    "custom_fields": ["gpus", "cpus", "memory", "walltime", "partition", "account"],
    "limits": {
        "default": {
            "gpus": 2,
            "cpus": 16,
            "memory": "64G",
            "walltime": "8h",
            "partitions": ["cpu", "gpu"],
            "accounts": ["demo"],
        },
        "groups": {
            "workshop": {"gpus": 1, "walltime": "2h"},
            "power": {"gpus": 8, "walltime": "2d", "partitions": ["cpu", "gpu", "big"]},
        },
    },
}


@pytest.fixture
def policy():
    return policy_from_dict(SITE)


def test_profile_defaults_become_a_request(policy):
    r = policy.validate({"profile": "gpu1"})
    assert (r.partition, r.gpus, r.cpus, r.memory_mb, r.walltime_min) == ("gpu", 1, 4, 16384, 240)
    assert r.describe() == "gpu1: 1 GPU · 4 cores · 16 GB · 4 h · partition gpu"


def test_no_options_takes_the_first_allowed_profile(policy):
    assert policy.validate({}).profile == "cpu"


def test_custom_values_within_limits(policy):
    r = policy.validate(
        {"profile": "cpu", "cpus": "4", "memory": "8G", "walltime": "02:30:00", "account": "demo"}
    )
    assert (r.cpus, r.memory_mb, r.walltime_min, r.account) == (4, 8192, 150, "demo")


def test_empty_fields_mean_profile_value(policy):
    r = policy.validate({"profile": "gpu1", "gpus": "", "memory": None, "partition": ""})
    assert (r.gpus, r.memory_mb, r.partition) == (1, 16384, "gpu")


@pytest.mark.parametrize(
    "options, field, words",
    [
        ({"profile": "nope"}, "profile", "unknown profile"),
        ({"profile": "Bad Name"}, "profile", "not a profile name"),
        ({"profile": "staff"}, "profile", "not available to you"),
        ({"gpus": 3}, "gpus", "limit is 2"),
        ({"gpus": -1}, "gpus", "out of range"),
        ({"gpus": "1.5"}, "gpus", "whole number"),
        ({"gpus": True}, "gpus", "whole number"),
        ({"gpus": 10**30}, "gpus", "out of range"),
        ({"cpus": 0}, "cpus", "out of range"),
        ({"memory": "12Q"}, "memory", "size like"),
        ({"memory": "100G"}, "memory", "limit is 64 GB"),
        ({"walltime": "9h"}, "walltime", "limit is 08:00:00"),
        ({"walltime": "1:75:00"}, "walltime", "above 59"),
        ({"walltime": "soon"}, "walltime", "time like"),
        ({"partition": "big"}, "partition", "not allowed"),
        ({"partition": "gpu\n#SBATCH --gres=gpu:8"}, "partition", "not a valid name"),
        ({"account": "other"}, "account", "not allowed"),
        ({"account": "a b"}, "account", "not a valid name"),
        ({"cmd": "rm -rf ~"}, "'cmd'", "unknown option"),
    ],
)
def test_rejections_name_the_field(policy, options, field, words):
    with pytest.raises(PolicyError) as e:
        policy.validate(options)
    assert e.value.field == field
    assert words in e.value.message


def test_workshop_group_is_limited(policy):
    # gpu1 asks for 4 h; a workshop participant may take it with a shorter walltime.
    with pytest.raises(PolicyError, match="limit is 02:00:00"):
        policy.validate({"profile": "gpu1"}, groups=["workshop"])
    assert policy.validate({"profile": "gpu1", "walltime": "2h"}, groups=["workshop"]).gpus == 1
    with pytest.raises(PolicyError, match="2 GPUs requested, your limit is 1"):
        policy.validate({"profile": "fullnode", "walltime": "1h"}, groups=["workshop"])
    assert policy.excess(policy.profiles[1], ["workshop"]).endswith("your limit is 02:00:00")
    assert policy.excess(policy.profiles[0], ["workshop"]) == ""
    assert "staff" not in [p.name for p in policy.profiles_for(["workshop"])]


def test_group_limits_merge_generously(policy):
    limits = policy.limits_for(["workshop", "power"])
    assert (limits.gpus, limits.walltime_min) == (8, 2880)
    assert "big" in limits.partitions
    assert limits.memory_mb == 65536  # inherited from the default


def test_group_restricted_profile(policy):
    assert policy.validate({"profile": "staff"}, groups=["staff"]).profile == "staff"


def test_custom_fields_must_be_allowed():
    site = dict(SITE, custom_fields=["walltime"])
    policy = policy_from_dict(site)
    assert policy.validate({"walltime": "30m"}).walltime_min == 30
    with pytest.raises(PolicyError) as e:
        policy.validate({"gpus": 1})
    assert e.value.field == "gpus"


def test_options_must_be_a_mapping(policy):
    with pytest.raises(PolicyError):
        policy.validate(["profile", "cpu"])


@pytest.mark.parametrize(
    "text, mb", [("16G", 16384), ("512M", 512), ("2GB", 2048), ("1T", 1048576), ("2048", 2048), (100, 100)]
)
def test_parse_memory(text, mb):
    assert parse_memory(text) == mb


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("04:00:00", 240),
        ("1-12:00:00", 2160),
        ("90:00", 5400),
        ("2h", 120),
        ("90m", 90),
        ("1d", 1440),
        ("00:00:30", 1),
        (45, 45),
    ],
)
def test_parse_walltime(text, minutes):
    assert parse_walltime(text) == minutes


def test_format_walltime():
    assert format_walltime(240) == "04:00:00"
    assert format_walltime(2160) == "1-12:00:00"


@pytest.mark.parametrize(
    "site, path",
    [
        ({"profiles": [{"name": "x", "partition": "cpu", "gpus": -1}]}, "profiles[0].gpus"),
        ({"profiles": [{"name": "x", "partition": "c p"}]}, "profiles[0].partition"),
        ({"profiles": [{"name": "X!", "partition": "cpu"}]}, "profiles[0].name"),
        ({"profiles": [{"name": "x", "partition": "cpu", "memory": "lots"}]}, "profiles[0].memory"),
        (
            {"profiles": [{"name": "x", "partition": "cpu"}], "limits": {"groups": {"w": {"gpus": "x"}}}},
            "limits.groups.w.gpus",
        ),
        ({"profiles": []}, "profiles"),
        ({"profiles": [{"name": "x", "partition": "cpu"}], "custom_fields": ["cmd"]}, "custom_fields"),
    ],
)
def test_bad_site_policy_names_the_key(site, path):
    with pytest.raises(PolicyError) as e:
        policy_from_dict(site)
    assert e.value.field == path


@pytest.mark.parametrize("groups", [(), ("workshop",), ("power",), ("staff", "workshop")])
def test_a_users_view_of_the_policy_reads_back_to_the_same_decisions(policy, groups):
    """Sessions get ``view_for(groups)`` as WERKBANK_POLICY: ``werkbank submit`` decides as the hub does."""
    view = policy_from_dict(policy.view_for(groups))
    assert [p.name for p in view.profiles] == [p.name for p in policy.profiles_for(groups)]
    assert view.limits_for(()) == policy.limits_for(groups)
    attempts = [
        {"profile": "gpu1"},
        {"profile": "fullnode"},
        {"profile": "staff"},
        {"profile": "cpu", "gpus": "2", "walltime": "1d"},
        {"profile": "gpu1", "partition": "big", "account": "demo"},
    ]
    for options in attempts:
        try:
            expected = policy.validate(options, groups)
        except PolicyError as e:
            with pytest.raises(PolicyError) as seen:
                view.validate(options)
            # "not available to you" becomes "unknown" for a profile the view leaves out; same field.
            assert seen.value.field == e.field
        else:
            assert view.validate(options) == expected
