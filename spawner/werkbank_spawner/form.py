"""The spawn page's options form: the profiles a user may choose, plus bounded custom fields.

Everything interpolated is escaped; the bounds shown (``max=``) are a convenience, the
server-side policy check is what counts.
"""

from __future__ import annotations

from html import escape

from werkbank_core.policy import format_memory, format_walltime


def render_options_form(spawner) -> str:
    """HTML for JupyterHub's spawn page (``Spawner.options_form`` callable)."""
    policy = spawner.user_policy
    groups = spawner.user_groups
    profiles = policy.profiles_for(groups)
    previous = (spawner.user_options or {}).get("profile")
    fitting = [p.name for p in profiles if not policy.excess(p, groups)]
    chosen = previous if any(p.name == previous for p in profiles) else (fitting[0] if fitting else "")

    parts = []
    if spawner.last_end_reason:
        parts.append(
            '<div class="alert alert-info" role="status" id="werkbank-last-end">'
            f"Your last server ended: {escape(spawner.last_end_reason)}</div>"
        )
    if not profiles:
        parts.append(
            '<div class="alert alert-warning">No profile is available to you; ask the site admins.</div>'
        )
        return "\n".join(parts)
    parts.append('<fieldset class="werkbank-profiles mb-3"><legend>Resources</legend>')
    parts += [_profile(p, checked=p.name == chosen, excess=policy.excess(p, groups)) for p in profiles]
    parts.append("</fieldset>")
    parts += _custom_fields(policy.custom_fields, policy.limits_for(groups))
    return "\n".join(parts)


def _profile(p, *, checked: bool, excess: str) -> str:
    """One profile's radio button, with its description and what exceeds the user's limits."""
    pid = f"werkbank-profile-{escape(p.name)}"
    description = f'<div class="form-text">{escape(p.description)}</div>' if p.description else ""
    if excess:
        description += (
            f'<div class="form-text text-warning">Exceeds your limits ({escape(excess)}); '
            "adjust it below to use this profile.</div>"
        )
    return (
        '<div class="form-check mb-2">'
        f'<input class="form-check-input" type="radio" name="profile" id="{pid}"'
        f' value="{escape(p.name)}"{" checked" if checked else ""}>'
        f'<label class="form-check-label" for="{pid}"><strong>{escape(p.label)}</strong>'
        f' <span class="text-muted">· partition {escape(p.partition)}</span></label>{description}</div>'
    )


def _custom_fields(fields, limits) -> list[str]:
    """The optional fields users may set on top of a profile, with their limits shown."""
    if not fields:
        return []
    parts = [
        '<details class="werkbank-custom mb-3">'
        "<summary>Adjust resources (optional; empty = profile value)</summary>"
    ]
    if "gpus" in fields:
        parts.append(_number("gpus", "GPUs", 0, limits.gpus))
    if "cpus" in fields:
        parts.append(_number("cpus", "CPU cores", 1, limits.cpus))
    if "memory" in fields:
        parts.append(_text("memory", "Memory", f"e.g. 16G (your limit: {format_memory(limits.memory_mb)})"))
    if "walltime" in fields:
        limit = format_walltime(limits.walltime_min)
        parts.append(_text("walltime", "Walltime", f"e.g. 02:00:00 or 2h (your limit: {limit})"))
    if "partition" in fields:
        parts.append(_select("partition", "Partition", limits.partitions))
    if "account" in fields and limits.accounts:
        parts.append(_select("account", "Account", limits.accounts))
    parts.append("</details>")
    return parts


def _number(name: str, label: str, low: int, high: int) -> str:
    return (
        f'<div class="mb-2"><label class="form-label" for="werkbank-{name}">{label} (max {high})</label>'
        f'<input class="form-control" type="number" name="{name}" id="werkbank-{name}"'
        f' min="{low}" max="{high}"></div>'
    )


def _text(name: str, label: str, hint: str) -> str:
    return (
        f'<div class="mb-2"><label class="form-label" for="werkbank-{name}">{label}</label>'
        f'<input class="form-control" type="text" name="{name}" id="werkbank-{name}"'
        f' placeholder="{escape(hint)}"></div>'
    )


def _select(name: str, label: str, choices) -> str:
    options = '<option value="">(profile default)</option>' + "".join(
        f'<option value="{escape(c)}">{escape(c)}</option>' for c in choices
    )
    return (
        f'<div class="mb-2"><label class="form-label" for="werkbank-{name}">{label}</label>'
        f'<select class="form-select" name="{name}" id="werkbank-{name}">{options}</select></div>'
    )
