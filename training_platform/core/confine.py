"""Runs execute users' code as an unprivileged user, out of reach of the platform's secrets.

A trainer imports a reward file, an evaluation runs a scorer file, a config can name modules:
whoever may start a run may run code. That code must not read what the platform keeps for
itself: the admin token, the key that decrypts stored SSH keys and webhook URLs, the database.

Where the platform runs as root, local runs and scorer files run as TP_RUN_AS (tp-runner,
created here on first use with useradd, no login shell). What that user may do:
- pass through (not list) TP_HOME and the directories on the way to the Python and the
  platform's code: a per-user ACL entry (setfacl) where a directory is closed to others;
- read what runs need (datasets, models, reward files, earlier attempts' checkpoints);
- write in its run directory (root's, mode 1777: it may add files there, never replace or
  remove the platform's own), in its home TP_HOME/runner-home and in the temporary directory.
The platform's own files are 0600 or sit in 0700 directories: admin-token, secret.key, the
SQLite database, logs and service state. Files a run wrote are read by the platform without
following symbolic links (runners/base.read_stream), and the files the platform writes into a
run directory are created afresh, never through a name a run left there.

Not as root, nothing changes identity and runs can read what the platform's user can read:
`prepare` logs that once, and docs/operations.md says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training_platform.core.settings import Settings

log = logging.getLogger(__name__)

HOME_DIR = "runner-home"
# What only the platform reads, closed (0700) whether or not runs change identity.
_PLATFORM_DIRS = ("logs", "run", "redis", "vectors")
_prepared: dict[tuple[str, str], Account | None] = {}
_lock = threading.Lock()


class ConfineError(RuntimeError):
    """The run user cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class Account:
    """The user runs execute as."""

    name: str
    uid: int
    gid: int
    home: Path

    def environment(self) -> dict[str, str]:
        """What a process of this user reads as its own (it cannot write root's home)."""
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            # Ray's default /tmp/ray may be root's; a short path (its socket names are long).
            "RAY_TMPDIR": ray_tmpdir(self.uid),
            # torch makes /tmp/torchinductor_$USER at import: a warm server (root, with this
            # environment) would make it root's. This one exists, the account's (prepare).
            "TORCHINDUCTOR_CACHE_DIR": str(self.inductor_cache),
        }

    @property
    def inductor_cache(self) -> Path:
        return self.home / ".cache" / "torchinductor"

    def popen_arguments(self) -> dict[str, Any]:
        """subprocess arguments that start a program as this user, with no extra groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    @property
    def spec(self) -> str:
        """`uid:gid`, as the launcher and the warm server take it."""
        return f"{self.uid}:{self.gid}"


def ray_tmpdir(uid: int) -> str:
    # Created 0700 by `prepare`, which refuses one another user made first.
    return f"/tmp/tp-ray-{uid}"  # noqa: S108


def become(spec: str) -> None:
    """In a forked child: drop every group, then take the gid and uid of `spec` (uid:gid)."""
    uid, gid = (int(part) for part in spec.split(":"))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def prepare(settings: Settings) -> Account | None:
    """The account runs of this platform execute as, ready to use; None when runs keep the
    platform's user (not root, or TP_RUN_AS empty). Idempotent; done once per process."""
    key = (str(settings.home), settings.run_as)
    with _lock:
        if key not in _prepared:
            _prepared[key] = _prepare(settings)
        return _prepared[key]


def _prepare(settings: Settings) -> Account | None:
    close_platform_files(settings)
    if not settings.run_as:
        log.warning("TP_RUN_AS is empty: runs execute as the platform's user")
        return None
    if os.geteuid() != 0:
        log.warning(
            "the platform does not run as root: runs execute as %s and can read its files",
            pwd.getpwuid(os.geteuid()).pw_name,
        )
        return None
    entry = _user(settings.run_as)
    if entry.pw_uid == 0:
        raise ConfineError(f"TP_RUN_AS={settings.run_as} is root; name an unprivileged user")
    home = settings.home / HOME_DIR
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)
    account = Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home)
    _own_directory(Path(ray_tmpdir(account.uid)), account)
    for directory in (home / ".cache", account.inductor_cache):  # in its home: just its own
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, account.uid, account.gid, follow_symlinks=False)
    grant_passage(account, reachable(settings))
    return account


def _user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    done = subprocess.run(
        [
            _tool("useradd"),
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:  # another process may have created it meanwhile (useradd then fails)
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfineError(
            f"cannot create the run user {name!r}: {done.stderr.strip() or done.returncode}"
        ) from None


def _tool(name: str) -> str:
    """An administration command by full path (/usr/sbin is often missing from PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def _own_directory(path: Path, account: Account) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        os.chown(path, account.uid, account.gid)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != account.uid:
        raise ConfineError(f"{path} exists and is not {account.name}'s directory; remove it")


def private_dir(path: Path) -> Path:
    """A directory of the platform's alone (0700), created if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def close_home(home: Path) -> None:
    """TP_HOME closed to others (0700). A home that carries ACL entries (the run user's
    passage) keeps its mode: chmod would rewrite the ACL mask and cut running runs off."""
    try:
        os.getxattr(home, "system.posix_acl_access")
    except OSError:
        home.chmod(0o700)


def close_platform_files(settings: Settings) -> None:
    """The database file 0600 and the platform's own directories 0700 (SQLite gives its
    -wal and -shm files the database's mode)."""
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_uid == os.geteuid():
                    path.chmod(0o600)
        if not database.exists() and database.parent.is_dir():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in _PLATFORM_DIRS:
        with contextlib.suppress(FileNotFoundError):
            (settings.home / name).chmod(0o700)


def reachable(settings: Settings) -> list[Path]:
    """What runs must reach: TP_HOME, the Python (and its standard library), the platform's
    environment and code."""
    pythons = [Path(sys.executable)]
    if settings.resolved_vllm_python:
        pythons.append(Path(settings.resolved_vllm_python))
    return [
        settings.home,
        *(p.parent for p in pythons),
        *(p.resolve().parent for p in pythons),
        Path(sys.base_prefix).resolve() / "lib",
        Path(sys.prefix),
        Path(__file__).resolve().parents[2],
    ]


def grant_passage(account: Account, targets: list[Path]) -> list[Path]:
    """Let the account pass (x) each target and the directories above it that are closed to
    others, by a per-user ACL entry; what was granted."""
    needed: list[Path] = []
    for target in targets:
        for directory in [target, *target.parents]:
            if directory in needed or not directory.is_dir():
                continue
            if not directory.stat().st_mode & stat.S_IXOTH:
                needed.append(directory)
    if not needed:
        return []
    setfacl = _tool("setfacl")
    if not Path(setfacl).is_file():
        raise ConfineError(
            f"{account.name} cannot reach {', '.join(map(str, needed))}: install the acl "
            "package (setfacl) or let others pass these directories (chmod o+x)"
        )
    for directory in needed:
        subprocess.run(
            [setfacl, "-m", f"u:{account.uid}:x", str(directory)], check=True, capture_output=True
        )
    return needed


def hand_over(run_dir: Path, account: Account, secrets: list[Path]) -> None:
    """Let the account write in run_dir without replacing what the platform put there:
    root's directory, mode 1777; the run's own secret files become the account's."""
    run_dir.chmod(0o1777)
    for path in secrets:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)
