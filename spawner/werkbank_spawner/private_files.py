"""Files the hub writes for one account only: secrets, keys, MLflow's auth.ini.

The hub usually runs as root and writes some of them into folders another account owns (MLflow's
folder belongs to ``werkbank-mlflow``, which parses every user's requests). A file opened there by
name would follow a symbolic link that account planted (``auth.ini -> /etc/shadow``), and root
would truncate, write and hand over the link's target. So a file is always written new: what is
at its name is removed first (a link itself, never what it names) and the file is created with
``O_EXCL | O_NOFOLLOW``, which fails rather than follows anything put there meanwhile.
"""

from __future__ import annotations

import os
import pwd


def write_private_file(path: str | os.PathLike, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """``path`` written new with ``text``, mode 0600, owned by ``owner`` if given. Raises
    :class:`OSError` (``FileExistsError`` if something appeared at ``path`` meanwhile)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if owner:
            os.fchown(f.fileno(), owner.pw_uid, owner.pw_gid)
        f.write(text)


def write_private_folder(folder: str, files: dict[str, str], owner: pwd.struct_passwd | None) -> None:
    """``folder`` (its parent made 0755 if missing) 0700 with ``files`` in it
    (:func:`write_private_file`), all owned by ``owner`` if given. The parent must be the hub's:
    then the folder itself cannot be swapped for a link by the account it is given to."""
    os.makedirs(os.path.dirname(folder), mode=0o755, exist_ok=True)
    if not os.path.lexists(folder):
        os.mkdir(folder, 0o700)
    elif os.path.islink(folder) or not os.path.isdir(folder):
        raise OSError(f"{folder} is not a folder")
    if owner:
        os.chown(folder, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    os.chmod(folder, 0o700)
    for name, text in files.items():
        write_private_file(os.path.join(folder, name), text, owner)
