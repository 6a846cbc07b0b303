"""Executable filters and address verifiers: run a program, read its verdict.

What it is for: ``--filter=/path/prog`` and ``--client-filter=/path/prog``
(also ``file:``/``exe:``) and ``--address-verifier=/path/prog``, exactly as
the reference guide describes them, without blocking the event loop.

What it expects: an executable program.  It is run with
:func:`asyncio.create_subprocess_exec` (execve, never a shell) with the
arguments of the guide, an environment of ``PATH`` and ``IFS`` only, stdin
and stderr on ``/dev/null``, stdout on a socket (one end of a socketpair, as
E-MailRelay 2.6b gives it: a program's ``[ -S /dev/stdout ]`` holds, ``-p`` not),
no other open descriptors, as
``--user`` (:func:`emailrelay.identity.child_preexec`) and in a new process
group (session).

What it guarantees:
- at most :data:`OUTPUT_CAP` (64 KiB) bytes of stdout are kept; the rest is read and
  discarded, so a chatty program neither blocks on a full socket nor fills our
  memory;
- after ``--filter-timeout`` seconds the whole process group is killed with
  SIGKILL; the filter has failed with the response ``error`` and the reason
  ``timeout`` (upstream's warning ``filter [<name>] timed out after <n>s``);
- the program is done when it has exited and its output has ended, as upstream's:
  a background child still holding the output keeps it running until the
  timeout (then the group is killed and the filter has timed out), so such a
  child can never outlive a filter that seemed to succeed;
- a filter's or verifier's output is read as E-MailRelay 2.6b reads it: only
  its first 1 024 bytes count (a filter's marker line must end within them,
  whatever the socket's chunks; a verifier's first line, its reply text, is
  at most that long, and a line 2 beyond them is missing); the first line that
  starts with ``<<`` and has ``>>`` later (or ``[[`` ... ``]]``) gives the
  response (the text in between; anything after the closing marker is
  ignored; a leading ``4xx``/``5xx`` and a space set the SMTP code), a second
  such line the reason (log and ``.bad`` only); an empty one (``<<>>``) still
  counts as one of the two; without a response text it is ``rejected``;
  control characters are shown escaped (``\t``, ``\0``, ``\x01``);
- a program's output is text of any octets, as upstream's: what is not UTF-8
  (``caf\xe9``) is kept as it came (decoded with ``surrogateescape``), so the
  SMTP reply, the log and an envelope get the program's very octets;
- exit codes as E-MailRelay 2.6b maps them (:func:`result_for_exit_code`):
  0 and 101 ok; 100 abandon; 103 ok and, server side, rescan; server side
  102 abandon + rescan and 104 fail + rescan; client side 102 ok + stop
  scanning, 104 abandon + stop, 105 fail + stop; every other code (1-99,
  the rest of 104-115, above 115, a signal as 128+n, 127 for a program that
  cannot be executed) fails the message — never a silent accept;
- verifier exit codes (its output's CRs dropped): 0 local (line 1 full
  name, line 2 mailbox), 1 remote (line 2 the address, empty keeps the
  original), 2 reject 550 (line 1 reason, line 2 log-only), 3 temporary 450,
  100 abort the connection, anything else as 2; a time-out is a temporary
  failure.  No control character from the program ever reaches an address,
  a mailbox name or a reason: a reason's are shown escaped, as upstream
  shows them (``a\0b``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .. import identity
from .. import log as logmod
from ..config import Config
from .spec import FilterContext, Spec
from .verdicts import FilterOutcome, FilterResult, RecipientKind, RecipientVerdict

MINIMAL_ENV = {"PATH": "/usr/bin:/bin", "IFS": " \t\n"}
REASON_LIMIT = 400  # characters of an error text kept (clean_text)
SEARCH_LIMIT = 1024  # bytes of output read (marker lines, a verifier's two lines): 2.6b's 1 KiB
OUTPUT_CAP = 64 * 1024  # bytes of a program's stdout that are kept (the rest is read and discarded)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CODE = re.compile(r"^([45][0-9][0-9])(?: (.*)|$)", re.S)


# ---- running a program ----------------------------------------------------------------
@dataclass
class ProgramRun:
    """How a program ended."""

    exit_code: int | None = None
    signal: int | None = None
    output: bytes = b""
    timed_out: bool = False
    error: str | None = None  # could not be started
    elapsed: float = 0.0

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timeout after {self.elapsed:.0f}s"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit code {self.exit_code}"


async def run_program(argv: Sequence[str], *, timeout: float, output_cap: int = OUTPUT_CAP) -> ProgramRun:
    """Run a program as the guide's "Run-time environment" says; never raises for the program's sake."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    reader, writer = socket.socketpair()  # stdout a socket, as upstream's (not a pipe)
    read_fd, write_fd = reader.detach(), writer.detach()
    try:
        # subprocess.Popen, not the loop's subprocess_exec: uvloop ignores close_fds, so a filter
        # would inherit descriptors (sockets, pipes) beyond the three the guide promises
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=subprocess.DEVNULL,
            env=dict(MINIMAL_ENV),
            close_fds=True,
            start_new_session=True,
            preexec_fn=identity.child_preexec(),
        )
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
        os.close(read_fd)
        os.close(write_fd)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ProgramRun(error=f"cannot execute: {reason}", elapsed=time.monotonic() - started)
    os.close(write_fd)

    # The socket is read with add_reader on its descriptor, which we close exactly once, not with the
    # loop's connect_read_pipe: uvloop's pipe transport closes the descriptor twice (libuv's close, then
    # the file object's), and a spool thread that opens a file in between loses it to the second close
    # (then writes an envelope into whatever next takes that number: another client's socket).
    kept = bytearray()
    reading: asyncio.Future[None] = loop.create_future()  # done at the end of the output
    os.set_blocking(read_fd, False)

    def readable() -> None:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            loop.remove_reader(read_fd)
            if not reading.done():
                reading.set_result(None)
            return
        room = output_cap - len(kept)
        if room > 0:
            kept.extend(chunk[:room])

    loop.add_reader(read_fd, readable)
    exited = asyncio.ensure_future(_wait_for_exit(proc))
    run = ProgramRun()
    try:
        try:  # as upstream: the program is done when it has exited and its output has ended (a child
            # it left in the background holding the output keeps it running), within the timeout
            await asyncio.wait_for(asyncio.shield(exited), timeout)
            await asyncio.wait_for(asyncio.shield(reading), max(0.0, started + timeout - time.monotonic()))
        except TimeoutError:
            run.timed_out = True
            _kill_group(proc.pid)
            await exited
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    finally:
        reading.cancel()
        loop.remove_reader(read_fd)
        os.close(read_fd)
    run.output = bytes(kept)
    run.elapsed = time.monotonic() - started
    rc = proc.returncode
    if not run.timed_out and rc is not None:
        if rc < 0:
            run.signal = -rc
        else:
            run.exit_code = rc
    return run


async def _wait_for_exit(proc: subprocess.Popen[bytes]) -> int:
    """The exit status, without blocking the loop: a pidfd becomes readable when the child exits."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here: a thread waits instead
        return await loop.run_in_executor(None, proc.wait)
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# ---- output texts ------------------------------------------------------------------------
def clean_text(text: str, limit: int = REASON_LIMIT) -> str:
    """One safe printable line: control characters become spaces."""
    return _CONTROL.sub(" ", text).strip()[:limit].strip()


def printable(text: str, limit: int | None = None) -> str:
    r"""Upstream's printable form of a program's text: a backslash and control characters
    escaped (``\\``, ``\t``, ``\0``, ``\x01``), everything else kept; its first ``limit``
    characters (all by default: a program's are bounded by :data:`SEARCH_LIMIT`)."""

    def escape(m: re.Match[str]) -> str:
        c = m.group(0)
        return _ESCAPES.get(c, f"\\x{ord(c):02x}")

    return re.sub(r"[\x00-\x1f\x7f\\]", escape, text[:limit])


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}


def is_clean_address(text: str) -> bool:
    """An address a verifier may give back: non-empty, no control characters, no angle brackets."""
    return (
        bool(text) and len(text) <= 512 and not _CONTROL.search(text) and "<" not in text and ">" not in text
    )


def is_clean_mailbox(text: str) -> bool:
    """A mailbox name: one path component, printable."""
    return (
        bool(text)
        and len(text) <= 255
        and text not in (".", "..")
        and "/" not in text
        and "\\" not in text
        and not _CONTROL.search(text)
    )


def split_code(text: str) -> tuple[str, int | None]:
    """``"550 not today"`` -> ``("not today", 550)``; ``"550"`` -> ``("", 550)``."""
    m = _CODE.match(text)
    if m is None:
        return text, None
    return m.group(2) or "", int(m.group(1))


def _marked(line: str) -> str | None:
    """The text of a ``<<text>>`` or ``[[text]]`` line (the line starts with the opening marker,
    the first closing marker after it ends the text), else None."""
    for opening, closing in (("<<", ">>"), ("[[", "]]")):
        if line.startswith(opening):
            end = line.find(closing, 2)
            if end >= 0:
                return line[2:end]
    return None


def parse_response(output: bytes) -> tuple[str, int | None, str]:
    """(response, code, reason) from a filter's output, as E-MailRelay 2.6b reads it.

    The first two marked lines count, empty ones too (``<<>>``): the response is the first one's
    text without its code (``rejected`` when there is none or it is empty), the reason the second
    one's text (the response when there is none or it is empty)."""
    found: list[str] = []
    text = output[:SEARCH_LIMIT].decode("utf-8", "surrogateescape")
    for line in text.splitlines():
        marked = _marked(line)
        if marked is not None:
            found.append(marked)
            if len(found) == 2:
                break
    found += ["", ""]
    response, code = split_code(found[0]) if found[0] else ("rejected", None)
    response = printable(response)
    reason = printable(found[1]) if found[1] else response
    return response, code, reason


#: (outcome, special) for the exit codes 100-105; special is "rescan" on the server side and
#: "stop scanning" on the client side.  Every code not here but 0 fails the message.
_SERVER_CODES = {
    100: (FilterOutcome.ABANDON, False),
    101: (FilterOutcome.OK, False),
    102: (FilterOutcome.ABANDON, True),
    103: (FilterOutcome.OK, True),
    104: (FilterOutcome.REJECT, True),
}
_CLIENT_CODES = {
    100: (FilterOutcome.ABANDON, False),
    101: (FilterOutcome.OK, False),
    102: (FilterOutcome.OK, True),
    103: (FilterOutcome.OK, False),
    104: (FilterOutcome.ABANDON, True),
    105: (FilterOutcome.REJECT, True),
}


def result_for_exit_code(exit_code: int, output: bytes = b"", *, client: bool = False) -> FilterResult:
    """E-MailRelay 2.6b's meaning of a filter's exit code (also ``exit:<n>``)."""
    if exit_code == 0:
        return FilterResult(FilterOutcome.OK, exit_code=0)
    outcome, special = (_CLIENT_CODES if client else _SERVER_CODES).get(
        exit_code, (FilterOutcome.REJECT, False)
    )
    rescan, stop = (False, special) if client else (special, False)
    if outcome is FilterOutcome.REJECT:
        response, code, reason = parse_response(output)
        return FilterResult(outcome, response, code, reason, exit_code=exit_code, rescan=rescan, stop=stop)
    if outcome is FilterOutcome.OK and stop:
        outcome = FilterOutcome.STOP_SCAN
    return FilterResult(outcome, exit_code=exit_code, rescan=rescan, stop=stop)


def describe_failure(exit_code: int | None, output: bytes) -> str:
    """The tail of upstream's warning: ``exit code 1: [not today](550)``."""
    response, code, _ = parse_response(output)
    tail = f"({code})" if code is not None else ""
    return f"exit code {exit_code}: [{response}]{tail}"


def seconds(value: float) -> str:
    """A time-out as upstream prints it: ``1``, ``2.5``."""
    return f"{value:g}"


# ---- the filter ----------------------------------------------------------------------------
class ExeFilter:
    """``--filter=/path/prog``: run with [content path, envelope path], both absolute."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.name = spec.name
        self.program = spec.value
        self.config = config
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        content = os.path.abspath(ctx.content_path)
        envelope = os.path.abspath(ctx.envelope_path)
        head = f"{ctx.log_prefix} [{self.name}]"
        self.log.verbose(f"{head}: [{ctx.message_id}]: running {self.program}", ctx.log_address)
        run = await run_program([self.program, content, envelope], timeout=self.config.filter_time_limit)
        if run.timed_out:
            self.log.warning(f"{head} timed out after {seconds(self.config.filter_time_limit)}s")
            return FilterResult(FilterOutcome.REJECT, "error", None, "timeout")
        if run.error is not None:  # upstream's child reports exec failures as exit code 127
            self.log.warning(f"{head} failed: exit code 127: [rejected]")
            why = run.error.removeprefix("cannot execute: ").lower()
            return FilterResult(
                FilterOutcome.REJECT, "rejected", None, f"filter exec error: {why}", exit_code=127
            )
        exit_code = 128 + run.signal if run.signal is not None else run.exit_code
        assert exit_code is not None
        result = result_for_exit_code(exit_code, run.output, client=ctx.client)
        if not result.ok:
            self.log.warning(f"{head} failed: {describe_failure(exit_code, run.output)}")
        return result

    async def close(self) -> None:
        return None


# ---- the verifier ----------------------------------------------------------------------------
class PeerLike(Protocol):
    host: str
    port: int


def peer_text(peer: PeerLike | str | None) -> str:
    """The verifier's third argument: ``ip:port`` (``ipv6.port`` as upstream writes it)."""
    if peer is None:
        return ""
    if isinstance(peer, str):
        return peer
    host, port = peer.host, peer.port
    if not port:
        return host
    return f"{host}.{port}" if ":" in host else f"{host}:{port}"


def verifier_args(
    recipient: str,
    mail_from: str | None,
    peer: PeerLike | str | None,
    domain: str,
    mechanism: str,
    auth_id: str,
) -> list[str]:
    """The six arguments of the guide: recipient, from (empty for VRFY), ip:port, domain, mechanism
    (``none`` for a client that did not authenticate, as E-MailRelay 2.6b sends), id."""
    return [
        recipient,
        mail_from or "",
        peer_text(peer),
        domain,
        (mechanism or "none").lower(),
        auth_id or "",
    ]


def verdict_for(
    code: int | None,
    line1: str,
    line2: str,
    recipient: str,
    *,
    detail: str = "",
    source: str = "address verifier",
    escaped: bool = True,
) -> RecipientVerdict:
    """E-MailRelay 2.6b's meaning of a verifier's answer (an exit code, or a ``net:`` response code)
    with its two texts: 0 local (``line2`` the mailbox), 1 remote (``line2`` the address), 3 a
    temporary 450, 100 abort, anything else a 550.  A 0 or 1 without its mailbox or address is a 550
    too.  The reason is ``line1``; ``detail`` (the log's tail) defaults to ``line2``.  The texts are
    escaped (:func:`printable`) when ``escaped``, as upstream does a program's (its SMTP reply then
    escapes them once more), and kept as given for a ``net:`` answer, which upstream escapes once."""
    log = logmod.get()
    shown = printable if escaped else str
    if code == 0 and line2.strip():
        mailbox = line2.strip()
        if not is_clean_mailbox(mailbox):  # ours: a mailbox name becomes a directory name
            log.warning(f"{source}: invalid mailbox name for [{recipient}]: [{printable(mailbox)}]")
            return RecipientVerdict(
                RecipientKind.TEMPORARY,
                recipient,
                reason="mailbox unavailable",
                detail="invalid mailbox name",
            )
        return RecipientVerdict(RecipientKind.LOCAL, recipient, mailbox=mailbox, full_name=shown(line1))
    if code == 1 and line2.strip():
        address = line2.strip()
        if not is_clean_address(address):
            log.warning(f"{source}: invalid address for [{recipient}]: [{printable(address)}]")
            return RecipientVerdict(
                RecipientKind.TEMPORARY, recipient, reason="mailbox unavailable", detail="invalid address"
            )
        return RecipientVerdict(RecipientKind.REMOTE, address)
    kind = {3: RecipientKind.TEMPORARY, 100: RecipientKind.ABORT}.get(code or 0, RecipientKind.REJECT)
    return RecipientVerdict(kind, recipient, reason=shown(line1), detail=shown(detail or line2))


def two_lines(output: bytes) -> tuple[str, str]:
    """A verifier's first two lines, as upstream reads them: every CR dropped (``a\\rb`` is ``ab``),
    the output's trailing white space trimmed, then split at LF; octets that are not UTF-8 kept as
    they came (``surrogateescape``)."""
    lines = output.decode("utf-8", "surrogateescape").replace("\r", "").rstrip(" \t\n").split("\n")
    return lines[0], lines[1] if len(lines) > 1 else ""


class ExeVerifier:
    """``--address-verifier=/path/prog``."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.program = spec.value
        self.config = config
        self.log = logmod.get()

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str,
        auth_id: str,
    ) -> RecipientVerdict:
        args = verifier_args(recipient, mail_from, peer, self.config.domain, auth_mechanism, auth_id)
        self.log.verbose(  # the session's address (--log-format=address), as upstream: it runs from the command
            "address verifier: executing " + " ".join(f"[{a}]" for a in [self.program, *args]),
            getattr(peer, "host", None),
        )
        run = await run_program([self.program, *args], timeout=self.config.filter_time_limit)
        if run.timed_out:  # upstream: "450 timeout"
            return RecipientVerdict(RecipientKind.TEMPORARY, recipient, reason="timeout", detail="timeout")
        if run.error is not None:  # missing, not executable, a directory: upstream's "550 error"
            self.log.warning("address verifier: exec error")
            return RecipientVerdict(RecipientKind.REJECT, recipient, reason="error", detail="exec error")
        line1, line2 = two_lines(run.output[:SEARCH_LIMIT])
        # as upstream's child reports them: a signal as 128+n
        exit_code = 128 + run.signal if run.signal is not None else run.exit_code
        self.log.verbose(
            f"address verifier: exit code {exit_code}: [{printable(line1)}] [{printable(line2)}]"
        )
        verdict = verdict_for(exit_code, line1, line2, recipient, detail=line2 or f"exit code {exit_code}")
        if verdict.kind in (RecipientKind.REJECT, RecipientKind.TEMPORARY) and not verdict.reason:
            verdict = replace(verdict, reason="mailbox unavailable")  # upstream's default text
        return verdict

    async def close(self) -> None:
        return None
