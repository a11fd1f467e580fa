"""The JupyterHub role a course's trainers get: what they may do with the course's servers and
nobody else's, without hub admin rights. One definition for the hub API route that grants it when
a course is created (:mod:`werkbank_spawner.api`) and for the hub's configuration, which loads the
roles of running courses at every start (JupyterHub deletes roles that are in neither).
"""

from __future__ import annotations

#: The hub service of the trainer console, whose token ``werkbank-workshop`` acts with too.
WORKSHOP_SERVICE = "werkbank-workshop"
#: The custom scope allowing to grant and remove course trainer roles: the workshop service's.
COURSE_ROLES_SCOPE = "custom:werkbank:course-roles"
COURSE_ROLES_SCOPE_HELP = "Grant and remove the trainer roles of werkbank courses."


def group_name(course: str) -> str:
    """A course's JupyterHub group (also its Slurm reservation's name)."""
    return f"course-{course}"


def role_name(course: str) -> str:
    return f"course-{course}-trainers"


def trainer_scopes(course: str) -> list[str]:
    """Use the trainer console; see the course's participants and their servers on the hub's
    admin page, start and stop those servers, and open them to help a participant; nothing
    outside the course's group."""
    group = group_name(course)
    return [
        f"access:services!service={WORKSHOP_SERVICE}",
        "admin-ui",
        f"list:users!group={group}",
        f"read:users!group={group}",
        f"servers!group={group}",
        f"access:servers!group={group}",
        f"list:groups!group={group}",
        f"read:groups!group={group}",
    ]


def trainer_role(course: str, trainers: list[str] | tuple[str, ...]) -> dict:
    """The role as JupyterHub's ``load_roles`` holds it."""
    return {
        "name": role_name(course),
        "description": f"Trainers of the werkbank course {course}",
        "scopes": trainer_scopes(course),
        "users": list(trainers),
    }
