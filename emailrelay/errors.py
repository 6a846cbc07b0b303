"""Exception types shared by every layer of emailrelay.

Each error carries the process exit code it maps to (SPEC.md §1: 1 for usage
and configuration errors, 2 when a listening socket cannot be bound), so the
front end can turn any ``EmailRelayError`` into a one-line
``emailrelay: error: <message>`` (``usage error:`` for an ``OptionUsageError``,
as E-MailRelay 2.6b words them) and ``sys.exit(err.exit_code)``.
"""

from __future__ import annotations


class EmailRelayError(Exception):
    """Base class of all errors the relay reports to its operator."""

    exit_code: int = 1
    label: str = "error"  # the word after the program's name on stderr
    hint: bool = False  # whether a line pointing at --help --verbose follows


class UsageError(EmailRelayError):
    """A bad command line: unknown option, missing value, conflicting options."""

    exit_code = 1


class OptionError(UsageError):
    """Command-line options that cannot be read (unknown, value missing, a value given twice):
    reported, as upstream does, one line per problem in sorted order, then a line pointing at
    ``--help --verbose``."""

    hint = True

    def __init__(self, *problems: str) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(self.problems))


class OptionUsageError(UsageError):
    """Options that are readable but not usable as given (``--pop`` without ``--pop-auth``, ``--port``
    with ``--as-client``, too many arguments): reported, as upstream does, as ``usage error: <text>``,
    with the ``--help --verbose`` line only when ``hint`` is set."""

    label = "usage error"

    def __init__(self, text: str, *, hint: bool = False) -> None:
        self.hint = hint
        super().__init__(text)


class ConfigError(EmailRelayError):
    """A bad configuration file (or other configuration input).

    ``str(err)`` is ``"<path>:<line>: <text>"`` when path and line are known,
    ``"<path>: <text>"`` with only a path, and ``"<text>"`` otherwise.
    """

    exit_code = 1

    def __init__(self, text: str, path: str | None = None, line: int | None = None) -> None:
        self.text = text
        self.path = path
        self.line = line
        if path is not None and line is not None:
            message = f"{path}:{line}: {text}"
        elif path is not None:
            message = f"{path}: {text}"
        else:
            message = text
        super().__init__(message)


class BindError(EmailRelayError):
    """A listening socket could not be bound."""

    exit_code = 2


class SpoolError(EmailRelayError):
    """The spool directory or one of its files could not be used."""

    exit_code = 1
