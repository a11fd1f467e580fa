"""Resource profiles and the site policy that bounds them.

Everything a user can ask for arrives here as untrusted ``user_options`` (form fields or
REST JSON) and leaves as a frozen :class:`JobRequest` whose every field is an int or a
string from a strict allow-list. Nothing downstream (script rendering, ``sbatch``) ever
sees the raw options.

Limits semantics: ``limits.default`` applies to every user; a user who belongs to groups
named under ``limits.groups`` gets, field by field, the most generous value among those
groups instead (so a group can restrict, e.g. ``workshop``, or grant, e.g. ``power-users``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

# Strings that may reach a batch script: partition, account, profile names.
# Deliberately narrow: no whitespace, quotes, '$', ';', '#', newlines or non-ASCII.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")

#: Fields a user may set on top of a profile, when the site allows custom values.
CUSTOM_FIELDS = ("gpus", "cpus", "memory", "walltime", "partition", "account")
#: Every key accepted in ``user_options``; anything else is rejected, never ignored.
OPTION_KEYS = ("profile", *CUSTOM_FIELDS)

MAX_GPUS = 64
MAX_CPUS = 1024
MAX_NODES = 4096
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB
MAX_WALLTIME_MIN = 366 * 24 * 60
#: The lowest uid a server may run as unless the site says otherwise: Debian's and most
#: distributions' first regular account; below it are root and the system accounts (daemons,
#: the hub's own services).
MIN_UID = 1000


class PolicyError(ValueError):
    """A user option (or a site setting) is not acceptable.

    ``field`` names the offending key; ``str(error)`` is a sentence for the user.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- parsing of single values --------------------------------------------------------

_MEMORY = re.compile(r"(\d{1,9})\s*([KMGT]?)(?:i?B)?\Z", re.IGNORECASE)
_MEMORY_FACTOR_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory(value: object, field: str = "memory") -> int:
    """Parse ``"16G"``, ``"512M"``, ``"2GB"``, ``"1T"`` or a plain number of MB; return MB."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PolicyError(field, f"expected a size like 16G or 512M, got {_show(value)}")
    if isinstance(value, int):
        mb = value
    else:
        m = _MEMORY.match(value.strip())
        if not m:
            raise PolicyError(field, f"expected a size like 16G or 512M, got {_show(value)}")
        mb = int(m.group(1)) * _MEMORY_FACTOR_MB[m.group(2).upper()]
        if mb != int(mb):
            raise PolicyError(field, f"{_show(value)} is not a whole number of megabytes")
        mb = int(mb)
    if not 1 <= mb <= MAX_MEMORY_MB:
        raise PolicyError(field, f"{_show(value)} is out of range")
    return mb


_HMS = re.compile(r"(?:(\d{1,3})-)?(\d{1,4}):(\d{2})(?::(\d{2}))?\Z")
_UNIT = re.compile(r"(\d{1,6})\s*(m|min|h|d)\Z", re.IGNORECASE)


def parse_walltime(value: object, field: str = "walltime") -> int:
    """Parse ``"04:00:00"``, ``"1-12:00:00"``, ``"90:00"`` (h:mm), ``"2h"``, ``"90m"``, ``"1d"``
    or a plain number of minutes; return whole minutes (seconds are rounded up)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PolicyError(field, f"expected a time like 04:00:00 or 2h, got {_show(value)}")
    if isinstance(value, int):
        minutes = value
    else:
        text = value.strip()
        if m := _HMS.match(text):
            days, hours, mins, secs = (int(g or 0) for g in m.groups())
            if mins > 59 or secs > 59:
                raise PolicyError(field, f"{_show(value)} has minutes or seconds above 59")
            minutes = days * 1440 + hours * 60 + mins + (1 if secs else 0)
        elif m := _UNIT.match(text):
            minutes = int(m.group(1)) * {"m": 1, "min": 1, "h": 60, "d": 1440}[m.group(2).lower()]
        elif text.isascii() and text.isdigit() and len(text) <= 6:
            minutes = int(text)
        else:
            raise PolicyError(field, f"expected a time like 04:00:00 or 2h, got {_show(value)}")
    if not 1 <= minutes <= MAX_WALLTIME_MIN:
        raise PolicyError(field, f"{_show(value)} is out of range")
    return minutes


def parse_count(value: object, field: str, *, minimum: int, maximum: int) -> int:
    """Parse a small non-negative integer given as int or decimal string."""
    if isinstance(value, bool):
        raise PolicyError(field, f"expected a whole number, got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 6):
            raise PolicyError(field, f"expected a whole number, got {_show(value)}")
        value = int(text)
    if not isinstance(value, int):
        raise PolicyError(field, f"expected a whole number, got {_show(value)}")
    if not minimum <= value <= maximum:
        raise PolicyError(field, f"{value} is out of range ({minimum}–{maximum})")
    return value


def parse_name(value: object, field: str) -> str:
    """A partition or account name from the safe character set."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise PolicyError(field, f"{_show(value)} is not a valid name (letters, digits, '_', '.', '-')")
    return value


def format_walltime(minutes: int) -> str:
    """Slurm's ``[D-]HH:MM:SS`` form."""
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def format_memory(mb: int) -> str:
    """Human form: ``16 GB`` for whole gigabytes, else ``512 MB``."""
    return f"{mb // 1024} GB" if mb % 1024 == 0 else f"{mb} MB"


def format_duration(minutes: int) -> str:
    """Human form for a profile label: ``1 h``, ``90 min``, ``2 d``."""
    if minutes % 1440 == 0:
        return f"{minutes // 1440} d"
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes} min"


def _show(value: object) -> str:
    """A short, safe rendering of untrusted input for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- value objects ---------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Per-user maximums. ``partitions``/``accounts`` are allow-lists (empty accounts:
    only "no account" is allowed)."""

    gpus: int
    cpus: int
    memory_mb: int
    walltime_min: int
    partitions: tuple[str, ...]
    accounts: tuple[str, ...] = ()
    nodes: int = 1  # batch jobs only (`werkbank submit --nodes`); a Jupyter server uses one node

    def merge_generous(self, other: Limits) -> Limits:
        """Field by field the larger limit, the union of allow-lists."""
        return Limits(
            gpus=max(self.gpus, other.gpus),
            cpus=max(self.cpus, other.cpus),
            memory_mb=max(self.memory_mb, other.memory_mb),
            walltime_min=max(self.walltime_min, other.walltime_min),
            partitions=tuple(dict.fromkeys(self.partitions + other.partitions)),
            accounts=tuple(dict.fromkeys(self.accounts + other.accounts)),
            nodes=max(self.nodes, other.nodes),
        )


@dataclass(frozen=True)
class Profile:
    """A named preset the spawn page offers, e.g. "1 GPU · 4 cores · 16 GB · 4 h"."""

    name: str
    partition: str
    cpus: int = 1
    memory_mb: int = 2048
    walltime_min: int = 60
    gpus: int = 0
    account: str = ""
    display_name: str = ""
    description: str = ""
    groups: tuple[str, ...] = ()  # empty: offered to everyone

    @property
    def label(self) -> str:
        return self.display_name or describe(self.gpus, self.cpus, self.memory_mb, self.walltime_min)


def describe(gpus: int, cpus: int, memory_mb: int, walltime_min: int) -> str:
    what = f"{gpus} GPU" + ("s" if gpus > 1 else "") if gpus else "CPU"
    cores = f"{cpus} core" + ("s" if cpus > 1 else "")
    return f"{what} · {cores} · {format_memory(memory_mb)} · {format_duration(walltime_min)}"


@dataclass(frozen=True)
class JobRequest:
    """A validated request: safe to render into a batch script."""

    profile: str
    partition: str
    cpus: int
    memory_mb: int
    walltime_min: int
    gpus: int = 0
    account: str = ""
    #: A Slurm reservation (a course's); never from the user's options.
    reservation: str = ""

    def describe(self) -> str:
        """One line for users and for ``WERKBANK_PROFILE``."""
        text = f"{self.profile}: " + describe(self.gpus, self.cpus, self.memory_mb, self.walltime_min)
        text += f" · partition {self.partition}"
        if self.account:
            text += f" · account {self.account}"
        if self.reservation:
            text += f" · reservation {self.reservation}"
        return text


@dataclass(frozen=True)
class Policy:
    """The site's profiles and limits; see the module docstring for the semantics."""

    profiles: tuple[Profile, ...]
    default_limits: Limits
    group_limits: Mapping[str, Limits] = field(default_factory=dict)
    custom_fields: frozenset[str] = frozenset()

    def __post_init__(self):
        if not self.profiles:
            raise PolicyError("profiles", "at least one profile is required")
        names = [p.name for p in self.profiles]
        for name in names:
            if names.count(name) > 1:
                raise PolicyError("profiles", f"profile name {name!r} is used twice")
        unknown = set(self.custom_fields) - set(CUSTOM_FIELDS)
        if unknown:
            raise PolicyError("custom_fields", f"unknown field(s) {sorted(unknown)}")

    # -- what a given user may do

    def limits_for(self, groups: Iterable[str]) -> Limits:
        granted = [self.group_limits[g] for g in sorted(set(groups)) if g in self.group_limits]
        if not granted:
            return self.default_limits
        limits = granted[0]
        for other in granted[1:]:
            limits = limits.merge_generous(other)
        return limits

    def profiles_for(self, groups: Iterable[str]) -> list[Profile]:
        """Profiles offered to this user's groups (whether they fit the limits or not)."""
        groups = set(groups)
        return [p for p in self.profiles if not p.groups or groups & set(p.groups)]

    def excess(self, profile: Profile, groups: Iterable[str]) -> str:
        """Why ``profile`` as it stands exceeds this user's limits ("" if it fits)."""
        problem = _excess(self._request(profile), self.limits_for(groups))
        return problem[1] if problem else ""

    def view_for(self, groups: Iterable[str]) -> dict:
        """What this user may do, in the site file's format (``policy_from_dict`` reads it back).

        Sessions get it as ``WERKBANK_POLICY`` so that ``werkbank submit`` offers and checks the
        same profiles as the spawn page, without reading the site file (which holds secrets).
        """
        limits = self.limits_for(groups)
        return {
            "profiles": [
                {
                    "name": p.name,
                    "partition": p.partition,
                    "cpus": p.cpus,
                    "memory": f"{p.memory_mb}M",
                    "walltime": p.walltime_min,
                    "gpus": p.gpus,
                    **({"account": p.account} if p.account else {}),
                    "display_name": p.display_name,
                    "description": p.description,
                }
                for p in self.profiles_for(groups)
            ],
            "limits": {
                "default": {
                    "gpus": limits.gpus,
                    "cpus": limits.cpus,
                    "memory": f"{limits.memory_mb}M",
                    "walltime": limits.walltime_min,
                    "partitions": list(limits.partitions),
                    "accounts": list(limits.accounts),
                    "nodes": limits.nodes,
                }
            },
            "custom_fields": sorted(self.custom_fields),
        }

    # -- validation

    def validate(self, options: Mapping[str, object], groups: Iterable[str] = ()) -> JobRequest:
        """Turn untrusted ``user_options`` into a :class:`JobRequest` or raise :class:`PolicyError`.

        Empty values (``""``/``None``) mean "use the profile's value". With no ``profile`` key
        the first profile the user may choose is used.
        """
        if not isinstance(options, Mapping):
            raise PolicyError("user_options", "expected an object of option names and values")
        groups = set(groups)
        unknown = sorted(str(k) for k in options if k not in OPTION_KEYS)
        if unknown:
            raise PolicyError(_show(unknown[0]), f"unknown option; allowed are {', '.join(OPTION_KEYS)}")
        given = {k: v for k, v in options.items() if v not in ("", None)}
        limits = self.limits_for(groups)

        profile = self._choose_profile(given.pop("profile", None), groups)
        not_allowed = sorted(set(given) - self.custom_fields)
        if not_allowed:
            raise PolicyError(not_allowed[0], "this site does not allow changing it; choose a profile")

        request = self._request(profile)
        changes: dict[str, object] = {}
        if "gpus" in given:
            changes["gpus"] = parse_count(given["gpus"], "gpus", minimum=0, maximum=MAX_GPUS)
        if "cpus" in given:
            changes["cpus"] = parse_count(given["cpus"], "cpus", minimum=1, maximum=MAX_CPUS)
        if "memory" in given:
            changes["memory_mb"] = parse_memory(given["memory"])
        if "walltime" in given:
            changes["walltime_min"] = parse_walltime(given["walltime"])
        if "partition" in given:
            changes["partition"] = parse_name(given["partition"], "partition")
        if "account" in given:
            changes["account"] = parse_name(given["account"], "account")
        request = replace(request, **changes)

        problem = _excess(request, limits)
        if problem:
            raise PolicyError(*problem)
        return request

    def _choose_profile(self, name: object, groups: set[str]) -> Profile:
        allowed = self.profiles_for(groups)
        if name is None:
            fitting = [p for p in allowed if not self.excess(p, groups)]
            if not fitting:
                raise PolicyError("profile", "no profile fits your limits; ask the site admins")
            return fitting[0]
        if not isinstance(name, str) or not PROFILE_NAME.match(name):
            raise PolicyError("profile", f"{_show(name)} is not a profile name")
        for p in allowed:
            if p.name == name:
                return p
        if any(p.name == name for p in self.profiles):
            raise PolicyError("profile", f"profile {name!r} is not available to you")
        choices = ", ".join(p.name for p in allowed) or "none"
        raise PolicyError("profile", f"unknown profile {name!r}; choose one of: {choices}")

    @staticmethod
    def _request(p: Profile) -> JobRequest:
        return JobRequest(
            profile=p.name,
            partition=p.partition,
            cpus=p.cpus,
            memory_mb=p.memory_mb,
            walltime_min=p.walltime_min,
            gpus=p.gpus,
            account=p.account,
        )


def _excess(r: JobRequest, limits: Limits) -> tuple[str, str] | None:
    """The first way ``r`` exceeds ``limits``, as (field, message), or None."""
    if r.gpus > limits.gpus:
        return "gpus", f"{r.gpus} GPUs requested, your limit is {limits.gpus}"
    if r.cpus > limits.cpus:
        return "cpus", f"{r.cpus} cores requested, your limit is {limits.cpus}"
    if r.memory_mb > limits.memory_mb:
        return "memory", (
            f"{format_memory(r.memory_mb)} requested, your limit is {format_memory(limits.memory_mb)}"
        )
    if r.walltime_min > limits.walltime_min:
        return "walltime", (
            f"{format_walltime(r.walltime_min)} requested, "
            f"your limit is {format_walltime(limits.walltime_min)}"
        )
    if r.partition not in limits.partitions:
        return "partition", (
            f"partition {r.partition!r} is not allowed; allowed: {', '.join(limits.partitions) or 'none'}"
        )
    if r.account and r.account not in limits.accounts:
        allowed = ", ".join(limits.accounts) or "none"
        return "account", f"account {r.account!r} is not allowed; allowed: {allowed}"
    return None


# --- building a Policy from the site file's (already type-checked) dictionaries --------


def policy_from_dict(data: Mapping) -> Policy:
    """Build a :class:`Policy` from the site file's ``profiles``/``limits``/``custom_fields``.

    Raises :class:`PolicyError` whose ``field`` is a dotted path into the site file.
    """
    profiles = []
    for i, p in enumerate(data.get("profiles") or []):
        where = f"profiles[{i}]"
        name = p.get("name")
        if not isinstance(name, str) or not PROFILE_NAME.match(name):
            raise PolicyError(f"{where}.name", f"{_show(name)} is not a valid profile name ([a-z0-9_-])")
        profiles.append(
            Profile(
                name=name,
                partition=parse_name(p.get("partition"), f"{where}.partition"),
                cpus=parse_count(p.get("cpus", 1), f"{where}.cpus", minimum=1, maximum=MAX_CPUS),
                memory_mb=parse_memory(p.get("memory", "2G"), f"{where}.memory"),
                walltime_min=parse_walltime(p.get("walltime", "01:00:00"), f"{where}.walltime"),
                gpus=parse_count(p.get("gpus", 0), f"{where}.gpus", minimum=0, maximum=MAX_GPUS),
                account=parse_name(p["account"], f"{where}.account") if p.get("account") else "",
                display_name=str(p.get("display_name") or ""),
                description=str(p.get("description") or ""),
                groups=tuple(p.get("groups") or ()),
            )
        )
    limits = data.get("limits") or {}
    default = _limits_from_dict(limits.get("default") or {}, "limits.default", None)
    groups = {
        str(g): _limits_from_dict(v or {}, f"limits.groups.{g}", default)
        for g, v in (limits.get("groups") or {}).items()
    }
    return Policy(
        profiles=tuple(profiles),
        default_limits=default,
        group_limits=groups,
        custom_fields=frozenset(data.get("custom_fields") or ()),
    )


def _limits_from_dict(d: Mapping, where: str, base: Limits | None) -> Limits:
    """Limits from a mapping. Keys missing from a group's limits are inherited from ``base``
    (the default limits); keys missing from the default limits are the most restrictive."""
    parsers = {
        "gpus": ("gpus", lambda v, f: parse_count(v, f, minimum=0, maximum=MAX_GPUS), 0),
        "cpus": ("cpus", lambda v, f: parse_count(v, f, minimum=1, maximum=MAX_CPUS), 1),
        "memory": ("memory_mb", parse_memory, "2G"),
        "walltime": ("walltime_min", parse_walltime, "01:00:00"),
        "partitions": ("partitions", _parse_names, []),
        "accounts": ("accounts", _parse_names, []),
        "nodes": ("nodes", lambda v, f: parse_count(v, f, minimum=1, maximum=MAX_NODES), 1),
    }
    values = {}
    for key, (attr, parse, fallback) in parsers.items():
        if key in d:
            values[attr] = parse(d[key], f"{where}.{key}")
        elif base is not None:
            values[attr] = getattr(base, attr)
        else:
            values[attr] = parse(fallback, f"{where}.{key}")
    return Limits(**values)


def _parse_names(values: object, field: str) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise PolicyError(field, f"expected a list of names, got {_show(values)}")
    return tuple(parse_name(v, field) for v in values)
