"""Workshops' pure logic: the course store, course logins, the participants' locked policy, the
trainer role. The real hub and Slurm are in tests/integration/test_workshop.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from tornado import web

from werkbank_core.policy import PolicyError
from werkbank_core.script import resource_options
from werkbank_spawner.site import defaults
from werkbank_spawner.workshop.course import validate
from werkbank_spawner.workshop.lifecycle import ALPHABET, course_partition, new_code
from werkbank_spawner.workshop.logins import CourseSharedPasswordAuthenticator
from werkbank_spawner.workshop.roles import trainer_role
from werkbank_spawner.workshop.sessions import course_policy, participant_course
from werkbank_spawner.workshop.store import CourseRecord, CourseStore

NOW = datetime(2027, 1, 20, 14, 0)


def record(**changes) -> CourseRecord:
    course = {
        "name": "intro-ml",
        "trainers": ["alice"],
        "participants": 3,
        "starts": "2027-01-20T13:00",
        "ends": "2027-01-20T18:00",
        "grace": "30m",
        "profile": {"gpus": 1, "cpus": 4, "memory": "16G", "walltime": "3h"},
        **changes.pop("course", {}),
    }
    changes.setdefault("event_code", "abcd-efgh")
    return CourseRecord(course=validate(course), partition="gpu", **changes)


def test_a_record_round_trips_through_the_store(tmp_path):
    store = CourseStore(tmp_path)
    saved = record(reservation="course-intro-ml", made_accounts=("intro01",), created=NOW)
    store.save(saved)
    assert store.names() == ["intro-ml"]
    assert store.get("intro-ml") == saved
    assert (tmp_path / "intro-ml").stat().st_mode & 0o077 == 0  # root's alone: it holds the code
    assert (tmp_path / "intro-ml" / "course.json").stat().st_mode & 0o077 == 0
    assert store.course_of("intro02") == saved and store.course_of("bob") is None
    ended = store.mark_ended(saved)
    assert store.get("intro-ml").ended == ended.ended and store.running() == []
    assert store.course_of("intro02") is None
    store.forget("intro-ml")
    assert store.names() == [] and store.get("intro-ml") is None


def test_the_window_is_starts_to_ends_plus_grace():
    r = record()
    assert (r.opens, r.closes) == (datetime(2027, 1, 20, 13), datetime(2027, 1, 20, 18, 30))
    assert not r.is_open(datetime(2027, 1, 20, 12, 59))
    assert r.is_open(datetime(2027, 1, 20, 13)) and r.is_open(datetime(2027, 1, 20, 18, 30))
    assert not r.is_open(datetime(2027, 1, 20, 18, 31))
    assert (
        r.closed_message()
        == "The course intro-ml runs from 2027-01-20 13:00 to 18:30; its accounts work only then."
    )
    two_days = record(course={"ends": "2027-01-21T18:00"})
    assert two_days.window() == "2027-01-20 13:00 to 2027-01-21 18:30"


def test_nicknames_get_the_next_free_account_and_keep_it(tmp_path):
    store, r = CourseStore(tmp_path), record()
    store.save(r)
    claimed = [store.claim(r, n) for n in ("ada", "bo", "ada", "cy")]
    assert claimed == ["intro01", "intro02", "intro01", "intro03"]
    assert store.claim(r, "dee") is None  # full
    assert store.nicknames("intro-ml") == {"ada": "intro01", "bo": "intro02", "cy": "intro03"}


def open_now(monkeypatch):
    monkeypatch.setattr(CourseRecord, "now", lambda self: NOW)


def authenticator(tmp_path, *records: CourseRecord) -> CourseSharedPasswordAuthenticator:
    store = CourseStore(tmp_path)
    for r in records:
        store.save(r)
    return CourseSharedPasswordAuthenticator(
        workshops_dir=str(tmp_path), user_password="site-password", allowed_users={"alice"}
    )


def login(auth, username: str, password: str):
    return asyncio.run(auth.authenticate(None, {"username": username, "password": password}))


def test_event_code_logins(tmp_path, monkeypatch):
    open_now(monkeypatch)
    auth = authenticator(tmp_path, record())
    assert login(auth, "Ada  Lovelace", "abcd-efgh") == {"name": "intro01"}
    assert login(auth, "ada lovelace", "abcd-efgh") == {"name": "intro01"}
    assert login(auth, "Bo", "abcd-efgh") == {"name": "intro02"}
    assert login(auth, "Bo", "abcd-efgX") is None  # not a course login, and not the site's password
    assert login(auth, "alice", "site-password") == {"name": "alice", "admin": False, "groups": []}
    with pytest.raises(web.HTTPError, match="nickname"):
        login(auth, "<script>", "abcd-efgh")
    login(auth, "Cy", "abcd-efgh")
    with pytest.raises(web.HTTPError, match="The course intro-ml is full"):
        login(auth, "Dee", "abcd-efgh")


def test_course_accounts_come_in_only_while_the_course_is_open(tmp_path, monkeypatch):
    auth = authenticator(tmp_path, record())
    monkeypatch.setattr(CourseRecord, "now", lambda self: NOW - timedelta(hours=2))
    with pytest.raises(web.HTTPError) as refused:
        login(auth, "Ada", "abcd-efgh")
    assert refused.value.status_code == 403
    assert "runs from 2027-01-20 13:00 to 18:30" in refused.value.log_message
    # Not by the site's password either: the account is the course's.
    with pytest.raises(web.HTTPError, match="runs from"):
        auth.check_allowed("intro01", {"name": "intro01"})
    monkeypatch.setattr(CourseRecord, "now", lambda self: NOW)
    assert auth.check_allowed("intro01", {"name": "intro01"}) is True
    assert auth.check_allowed("bob", {"name": "bob"}) is False  # not allowed by the site
    assert auth.check_allowed("alice", {"name": "alice"}) is True


def test_sheet_logins(tmp_path, monkeypatch):
    open_now(monkeypatch)
    sheet = record(
        event_code="", passwords={"intro01": "pw-one-xyz", "intro02": "pw-two-xyz"}, course={"login": "sheet"}
    )
    auth = authenticator(tmp_path, sheet)
    assert login(auth, "intro01", "pw-one-xyz") == {"name": "intro01"}
    assert login(auth, "intro01", "pw-two-xyz") is None
    assert login(auth, "intro03", "pw-one-xyz") is None


def test_listed_accounts_keep_the_sites_login(tmp_path, monkeypatch):
    open_now(monkeypatch)
    listed = record(event_code="", course={"participants": ["bob"], "accounts": "existing", "login": "sheet"})
    auth = authenticator(tmp_path, listed)
    monkeypatch.setattr(CourseRecord, "now", lambda self: NOW + timedelta(days=3))
    assert auth.check_allowed("bob", {"name": "bob"}) is False  # the site's rule, not the course's


def test_the_participants_policy_is_the_course_profile_only():
    r = record(reservation="course-intro-ml")
    policy = course_policy(r, NOW)
    request = policy.validate({})
    assert (request.profile, request.gpus, request.cpus, request.memory_mb, request.walltime_min) == (
        "course",
        1,
        4,
        16384,
        180,
    )
    for options, words in (({"profile": "gpu1"}, "unknown profile 'gpu1'"), ({"cpus": 8}, "does not allow")):
        with pytest.raises(PolicyError, match=words):
            policy.validate(options)
    # Late in the course, the time limit ends with the course (and the session's clock says so).
    late = course_policy(r, datetime(2027, 1, 20, 17, 45))
    assert late.validate({}).walltime_min == 45
    assert course_policy(r, datetime(2027, 1, 20, 18, 30)).validate({}).walltime_min == 1


def test_the_reservation_reaches_sbatch_checked():
    from dataclasses import replace

    request = replace(course_policy(record(), NOW).validate({}), reservation="course-intro-ml")
    assert ("reservation", "course-intro-ml") in resource_options(request)
    assert "reservation course-intro-ml" in request.describe()


def test_participant_course_needs_the_listing_and_the_group(tmp_path):
    store = CourseStore(tmp_path)
    store.save(record())
    assert participant_course(store, "intro01", ["course-intro-ml"]).name == "intro-ml"
    assert participant_course(store, "intro01", []) is None  # removed from the group: the site's policy
    assert participant_course(store, "alice", ["course-intro-ml"]) is None
    assert participant_course(store, "intro01", ["course-../intro-ml", "course-"]) is None


def test_partition_from_the_sites_profiles():
    site = defaults().model_copy(update={"profiles": validate_profiles([("cpu", 0), ("gpu", 1), ("big", 2)])})
    assert course_partition(record().course, site) == "gpu"
    assert course_partition(record(course={"profile": {"gpus": 0}}).course, site) == "cpu"
    assert course_partition(record(course={"profile": {"partition": "x"}}).course, site) == "x"


def validate_profiles(pairs):
    from werkbank_spawner.site.schema import Profile

    return tuple(Profile(name=p, partition=p, gpus=g) for p, g in pairs)


def test_codes_are_easy_to_read_and_random():
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        left, right = code.split("-")
        assert len(left) == len(right) == 4 and set(left + right) <= set(ALPHABET)


def test_the_trainer_role_is_scoped_to_the_course_group():
    role = trainer_role("intro-ml", ["alice"])
    assert role["name"] == "course-intro-ml-trainers" and role["users"] == ["alice"]
    assert role["scopes"][:2] == ["access:services!service=werkbank-workshop", "admin-ui"]
    for scope in role["scopes"][2:]:
        assert scope.endswith("!group=course-intro-ml")


def test_the_hub_pages_show_the_courses_message_escaped_to_its_people_only(tmp_path):
    from types import SimpleNamespace

    from werkbank_spawner.workshop.announcement import CourseAnnouncement

    store = CourseStore(tmp_path)
    store.save(record())
    announce = CourseAnnouncement(str(tmp_path))
    assert announce(SimpleNamespace(name="intro01")) == ""  # no message yet
    store.set_broadcast("intro-ml", "Break <script>x</script>", "alice")
    shown = announce(SimpleNamespace(name="intro01"))
    assert "Break &lt;script&gt;x&lt;/script&gt;" in shown and "<script>" not in shown
    assert announce(SimpleNamespace(name="alice")) == shown  # the trainer sees it too
    assert announce(SimpleNamespace(name="bob")) == "" and announce(None) == ""


def test_idle_time_counts_from_the_last_activity_of_a_ready_server():

    from werkbank_spawner.workshop.lifecycle import _idle_seconds

    ago = (datetime.now(UTC) - timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    ready = {"servers": {"": {"ready": True, "pending": None, "last_activity": ago}}}
    assert 170 < _idle_seconds(ready) < 200
    assert (
        _idle_seconds({"servers": {"": {"ready": False, "pending": "spawn", "last_activity": ago}}}) is None
    )
    assert _idle_seconds({"servers": {}}) is None and _idle_seconds(None) is None


def test_the_sheet_says_where_how_and_when(tmp_path):
    from werkbank_spawner.workshop.sheet import sheet_html, sheet_pdf

    event = record()
    html = sheet_html(event, "https://hub.example.org/")
    assert "https://hub.example.org/hub/login" in html and "abcd-efgh" in html
    assert "<svg" in html and "2027-01-20 13:00 to 18:30" in html and "1 GPU · 4 cores · 16 GB · 3 h" in html
    pdf = sheet_pdf(event, "https://hub.example.org/")
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 1
    cards = record(
        event_code="", passwords={f"intro0{i}": f"pw{i}" for i in (1, 2, 3)}, course={"login": "sheet"}
    )
    html = sheet_html(cards, "http://127.0.0.1:8000")
    assert html.count('class="card"') == 3 and "pw3" in html
    # Five cards: two pages of at most four.
    five = record(
        event_code="",
        passwords={f"intro0{i}": f"pw{i}" for i in range(1, 6)},
        course={"login": "sheet", "participants": 5},
    )
    assert (
        sheet_pdf(five, "http://x").count(b"/Type /Page") - sheet_pdf(five, "http://x").count(b"/Type /Pages")
        == 2
    )
