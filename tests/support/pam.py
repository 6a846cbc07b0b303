"""A PAM configuration for tests: ``pam_exec.so`` running a script that accepts one user.

What it is for: the PAM tests (unit, integration, compat) point ``EMAILRELAY_PAM_CONFDIR`` (our
testing aid, ``pam_start_confdir``) at :func:`pam_confdir`'s directory, whose service file
``emailrelay`` accepts user :data:`USER` with password :data:`PASSWORD` and permits the account.

Guarantees: nothing outside the given directory is written; :data:`PAM_EXEC` is None when the
system has no ``pam_exec.so`` (tests skip).
"""

from __future__ import annotations

from pathlib import Path

PAM_EXEC = next(
    (p for p in ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security", "/lib/security",
                 "/usr/lib64/security", "/usr/lib/security") if Path(p, "pam_exec.so").exists()),
    None,
)  # fmt: skip
USER, PASSWORD = "alice", "s3cret"
CHECK_SH = f"""#!/bin/sh
# pam_exec expose_authtok: the password arrives on stdin (NUL-terminated)
pw=$(tr -d '\\000')
[ "$PAM_USER" = {USER} ] && [ "$pw" = {PASSWORD} ]
"""


def pam_confdir(tmp: Path) -> Path:
    confdir = tmp / "pam.d"
    confdir.mkdir()
    check = tmp / "check.sh"
    check.write_text(CHECK_SH)
    check.chmod(0o755)
    (confdir / "emailrelay").write_text(
        f"auth required pam_exec.so expose_authtok quiet {check}\naccount required pam_permit.so\n"
    )
    return confdir
