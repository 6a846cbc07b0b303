"""emailrelay.auth.pam -- ``--server-auth=pam:`` / ``--pop-auth=pam:``: passwords checked by PAM.

PURPOSE
    A small ``ctypes`` binding of Linux-PAM (``libpam.so.0``, no PyPI
    dependency) and ``PamSecrets``, a ``Secrets`` look-alike whose password
    check is PAM (reference guide, "PAM authentication").  One check is
    ``pam_start`` (service ``emailrelay``), ``pam_authenticate``,
    ``pam_acct_mgmt``, ``pam_end``.  The conversation function answers
    ``PAM_PROMPT_ECHO_OFF`` with the password and ``PAM_PROMPT_ECHO_ON``
    with the user name; info and error messages are ignored.

EXPECTS
    * libpam on the system; the service file ``emailrelay`` in the PAM
      configuration directory (normally ``/etc/pam.d/emailrelay``).
    * Testing aid: the environment variable ``EMAILRELAY_PAM_CONFDIR``
      names another configuration directory (``pam_start_confdir``,
      Linux-PAM 1.4+), read when ``PamSecrets`` is made (start-up and
      SIGHUP).  Unset or empty: the system's directory.
    * Checks block (modules may sleep, fork or use the network): callers
      run ``PamSecrets.check_password`` in a thread pool, never on the
      event loop.

GUARANTEES
    * ``PamSecrets()`` raises ``ConfigError`` when libpam cannot be loaded
      (or lacks ``pam_start_confdir`` while ``EMAILRELAY_PAM_CONFDIR`` is
      set): a clear start-up error, never a failure mid-session.
    * ``check``/``authenticate`` never raise for a wrong password, an
      unknown user, a missing service file or a module failure: the answer
      is False (``PamResult.reason`` says why, from ``pam_strerror``; it
      never quotes the password).  User names or passwords containing NUL
      are refused without asking PAM.
    * Safe from any number of threads: every check has its own PAM handle
      and its own conversation callback, kept alive until ``pam_end``;
      checks are serialized by a lock because PAM modules are not all
      thread-safe.  libpam's failure delay is replaced by a no-op
      (``PAM_FAIL_DELAY``): the services' brute-force throttle delays
      failed logins without holding a thread.
    * Response strings handed to PAM are ``malloc``-ed (libpam frees them).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .secrets import Secrets

__all__ = ["CONFDIR_ENV", "SERVICE", "PamResult", "PamSecrets", "authenticate", "check", "load_library"]

SERVICE = "emailrelay"
CONFDIR_ENV = "EMAILRELAY_PAM_CONFDIR"

PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_CONV_ERR = 19
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_RHOST = 4
PAM_FAIL_DELAY = 10


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_Message)),
    ctypes.POINTER(ctypes.POINTER(_Response)),
    ctypes.c_void_p,
)
_DELAY_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


@dataclass(frozen=True)
class PamResult:
    """The answer of one check; ``reason`` is for the log (empty on success)."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class _Library:
    pam: Any
    libc: Any
    has_confdir: bool


_library: _Library | None = None
_library_lock = threading.Lock()
_check_lock = threading.Lock()


def _no_delay(retval: int, usec: int, appdata: int | None) -> None:
    """libpam's failure delay, disabled: the services throttle failed logins themselves."""


_NO_DELAY = _DELAY_FUNC(_no_delay)


def load_library() -> _Library:
    """libpam and libc with their prototypes set (loaded once); ``ConfigError`` when libpam is missing."""
    global _library
    import ctypes.util  # here: it imports shutil, bz2, lzma and tempfile (preload.SECRETS names it)

    with _library_lock:
        if _library is not None:
            return _library
        try:
            pam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError as exc:
            raise ConfigError(
                f"PAM authentication (pam:) needs libpam, which cannot be loaded: {exc}"
            ) from None
        handle = ctypes.POINTER(ctypes.c_void_p)
        pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv), handle]
        pam.pam_start.restype = ctypes.c_int
        has_confdir = hasattr(pam, "pam_start_confdir")
        if has_confdir:
            pam.pam_start_confdir.argtypes = [
                ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv), ctypes.c_char_p, handle,
            ]  # fmt: skip
            pam.pam_start_confdir.restype = ctypes.c_int
        for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
            getattr(pam, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
            getattr(pam, name).restype = ctypes.c_int
        pam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        pam.pam_set_item.restype = ctypes.c_int
        pam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
        pam.pam_strerror.restype = ctypes.c_char_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_char_p]
        libc.strdup.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        _library = _Library(pam, libc, has_confdir)
        return _library


def _conversation(lib: _Library, user: bytes, password: bytes) -> Any:
    """A conversation callback answering prompts with ``user``/``password`` (malloc-ed copies)."""

    def conv(count: int, messages: Any, responses: Any, appdata: int | None) -> int:
        if count <= 0:
            return PAM_CONV_ERR
        block = lib.libc.calloc(count, ctypes.sizeof(_Response))
        if not block:
            return PAM_BUF_ERR
        answers = ctypes.cast(block, ctypes.POINTER(_Response))
        try:
            for i in range(count):
                style = messages[i].contents.msg_style
                if style == PAM_PROMPT_ECHO_OFF:
                    answers[i].resp = lib.libc.strdup(password)
                elif style == PAM_PROMPT_ECHO_ON:
                    answers[i].resp = lib.libc.strdup(user)
                else:
                    continue  # PAM_ERROR_MSG, PAM_TEXT_INFO: nothing to answer
                if not answers[i].resp:
                    raise MemoryError
        except Exception:  # never let an exception cross the C boundary
            for i in range(count):
                if answers[i].resp:
                    lib.libc.free(answers[i].resp)
            lib.libc.free(block)
            return PAM_CONV_ERR
        responses[0] = answers
        return PAM_SUCCESS

    return _CONV_FUNC(conv)


def _reason(lib: _Library, handle: ctypes.c_void_p, status: int, step: str) -> str:
    text = lib.pam.pam_strerror(handle, status)
    return f"pam: {step}: {text.decode('utf-8', 'replace') if text else status}"


def check(
    user: str, password: bytes, *, rhost: str = "", confdir: str | None = None, service: str = SERVICE
) -> PamResult:
    """Authenticate ``user`` with ``password`` and check the account (blocking)."""
    user_raw = user.encode("utf-8", "surrogateescape")
    if not user_raw or b"\0" in user_raw or b"\0" in password:
        return PamResult(False, "pam: user name or password unusable")
    lib = load_library()
    callback = _conversation(lib, user_raw, password)  # alive until pam_end: a local of this frame
    conv = _Conv(callback, None)
    handle = ctypes.c_void_p()
    with _check_lock:
        if confdir:
            if not lib.has_confdir:
                return PamResult(False, "pam: this libpam has no pam_start_confdir")
            status = lib.pam.pam_start_confdir(
                service.encode(), user_raw, ctypes.byref(conv), os.fsencode(confdir), ctypes.byref(handle)
            )
        else:
            status = lib.pam.pam_start(service.encode(), user_raw, ctypes.byref(conv), ctypes.byref(handle))
        if status != PAM_SUCCESS:
            return PamResult(False, _reason(lib, handle, status, "pam_start"))
        try:
            lib.pam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(_NO_DELAY, ctypes.c_void_p))
            if rhost:
                lib.pam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode("ascii", "replace")))
            status = lib.pam.pam_authenticate(handle, 0)
            if status != PAM_SUCCESS:
                return PamResult(False, _reason(lib, handle, status, "authenticate"))
            status = lib.pam.pam_acct_mgmt(handle, 0)
            if status != PAM_SUCCESS:
                return PamResult(False, _reason(lib, handle, status, "account"))
            return PamResult(True)
        finally:
            lib.pam.pam_end(handle, status)
            del callback


def authenticate(user: str, password: bytes, *, rhost: str = "", confdir: str | None = None) -> bool:
    """True when PAM accepts ``user``/``password`` (never raises for a wrong password)."""
    return check(user, password, rhost=rhost, confdir=confdir).ok


class PamSecrets(Secrets):
    """``pam:`` as the services see it: PLAIN and LOGIN offered, passwords checked by PAM.

    No secrets lines: ``server_lookup`` finds nothing (so APOP and CRAM
    never succeed), ``trusted`` matches nothing; ``check_password`` asks
    PAM (blocking: run it in an executor).
    """

    def __init__(self, confdir: str | None = None) -> None:
        super().__init__("pam:")
        load_library()
        self.confdir = confdir if confdir is not None else (os.environ.get(CONFDIR_ENV) or None)
        if self.confdir and not load_library().has_confdir:
            raise ConfigError(f"{CONFDIR_ENV} is set but this libpam has no pam_start_confdir")

    @property
    def has_server_accounts(self) -> bool:
        return True

    def mechanisms_for_server(self) -> list[str]:
        return ["PLAIN", "LOGIN"]  # PAM needs the password itself: never CRAM

    def check_password(self, user: str, password: bytes, rhost: str = "") -> PamResult:
        return check(user, password, rhost=rhost, confdir=self.confdir)
