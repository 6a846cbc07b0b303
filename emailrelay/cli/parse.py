"""Command-line and config-file parsing for ``emailrelay``, driven by ``options.OPTIONS``.

What it accepts (reference guide, "Command line usage" and "Configuration"):

* ``--name=value``, ``--name value`` (options with a value), ``-x value``,
  ``-xvalue`` and getopt-style groups of short letters (``-dtF file``: a
  value-taking letter consumes the rest of the group or the next argument);
  ``--`` ends the options.
* Optional-value options (``--anonymous``, ``--syslog``) take a value only
  when written ``--name=value``; on their own, and in short form, they are
  flags.
* One non-option argument, the config file, which must be last. Its lines hold
  one option each, without dashes, name and value separated by white space
  (``name=value`` is accepted too); ``#`` starts a comment at the start of a
  line or after white space, so ``fd#3`` survives.
* ``@app`` in the value of a path-like option is replaced by ``app_dir``.
* Multiple configurations: ``<prefix>-spool-dir`` (prefix a single word, no
  dashes) declares a configuration; ``<prefix>-<option>`` then applies to it.
  An exact option name always wins over a prefixed reading (``pop-port`` is
  ``--pop-port``, never configuration ``pop``'s ``--port``). Unprefixed
  options belong to the first configuration (the first declared: the config
  file's order first, then the command line's). Process-wide options with
  any other prefix are ignored silently, as E-MailRelay 2.6b does.

What it guarantees:

* Values are strings as typed (after ``@app`` substitution); flags are
  ``True``; repeatable options are lists; an optional-value option given
  without a value is ``True``. Defaults are NOT filled in: use ``Parsed.get``.
* Duplicates, as E-MailRelay 2.6b: the config file's options come after the
  command line's, as if typed there. A non-repeatable option given twice
  (anywhere) with the same value is accepted once; with different values
  (``--syslog`` and ``--syslog=mail`` differ) it is an error in upstream's
  words, ``duplicate use of "-p"``, as typed the second time (a config-file
  line as ``--name``); ``--pid-file`` given more than once takes the first,
  with upstream's warning. A repeatable option's values accumulate, the
  command line's first.
* Errors: ``UsageError`` for the command line (``OptionError``, in
  upstream's words and all of them at once, for unknown options, missing
  values and duplicates; ``OptionUsageError`` for more than one non-option
  argument, after the config file was read), ``ConfigError`` with path and
  line for the config file. Upstream's rules for options that cannot be used
  together (``usage_rules``) are checked per configuration, except with
  --help/--version.
* The ``--as-*`` shorthands are not expanded here; ``expand_shorthands`` does
  that for the caller.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emailrelay.cli import usage_rules
from emailrelay.cli.options import OPTIONS, Option
from emailrelay.errors import ConfigError, OptionError, OptionUsageError, UsageError

Value = str | bool | list[str]

#: Replaced by the application directory in path-like option values.
APP_DIR_TOKEN = "@app"


def app_dir() -> str:
    """The directory of the running program (what ``@app`` stands for): the front end's, which the
    supervisor passes on to the roles it starts."""
    return str(Path(sys.argv[0]).resolve().parent) if sys.argv and sys.argv[0] else os.getcwd()


#: Options that E-MailRelay 2.6b takes more than once, using the first value, with a warning.
FIRST_WINS: frozenset[str] = frozenset({"pid-file"})

#: The option whose prefixed form declares a named configuration.
DECLARING_OPTION = "spool-dir"

#: What each --as-* shorthand stands for; a value also sets --forward-to.
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "as-client": ("log", "no-syslog", "no-daemon", "dont-serve", "forward"),
    "as-proxy": ("log", "close-stderr", "forward-on-disconnect"),
    "as-server": ("log", "close-stderr"),
}

#: The options this unix build takes: the table's Windows-only ones (--hidden, -H, --show) are
#: invalid options here, as in E-MailRelay 2.6b's unix build (issue 17).
ACCEPTED: dict[str, Option] = {o.name: o for o in OPTIONS if not o.windows_only}
ACCEPTED_SHORT: dict[str, Option] = {o.short: o for o in OPTIONS if o.short and not o.windows_only}

# Every error message text, in one place. "{opt}" is "--name"/"-x" on the
# command line and "option 'name'" in a config file.
MSG_INVALID_OPTION = 'invalid option: "{opt}"'  # on the command line: upstream's words
MSG_NO_VALUE_SUPPLIED = "no value supplied for {opt}"  # ditto; a long name is quoted, a letter not
MSG_UNKNOWN_CONFIG_OPTION = "unknown option '{name}'"
MSG_NO_VALUE_ALLOWED = "{opt} does not take a value"
MSG_VALUE_REQUIRED = "{opt} requires a value"
MSG_BAD_NUMBER = "{opt}: invalid number '{value}'"
MSG_BAD_PORT = "{opt}: invalid port number '{value}'"
MSG_BAD_NUMBER_LIST = "{opt}: invalid list of numbers '{value}'"
MSG_BAD_ASSIGNMENTS = "{opt}: invalid value '{value}' (expected <name>=<number>,...)"
MSG_BAD_CHOICE = "{opt}: invalid value '{value}' (expected {choices})"
MSG_EMPTY_ADDRESS = "{opt}: empty address"
MSG_DUPLICATE = 'duplicate use of "{opt}"'  # upstream's words
MSG_SHORTHAND_CONFLICT = "{opt} conflicts with {other}"
MSG_EXTRA_ARGUMENT = "too many non-option arguments"  # upstream's words (a "usage error")
MSG_CANNOT_READ = "cannot read config file: {reason}"
MSG_FIRST_WINS = "more than one --{name}: using the first"  # upstream's warning
MSG_UNDECLARED_HINT = " (no '--{prefix}-spool-dir' declares a configuration '{prefix}')"

_NUMBER = re.compile(r"[0-9]+")
_NUMBER_LIST = re.compile(r"[0-9]+(,[0-9]+)*")
_ASSIGNMENTS = re.compile(r"[A-Za-z0-9_-]+=[0-9]+(,[A-Za-z0-9_-]+=[0-9]+)*")
_TRAILING_COMMENT = re.compile(r"\s#")


@dataclass
class Parsed:
    """The result of parsing: options per configuration, plus warnings."""

    values: dict[str, Value]  # the first (or only) configuration, with the process-wide options
    config_file: str | None = None
    configs: dict[str, dict[str, Value]] = field(default_factory=dict)  # prefix ("" if none) -> values
    warnings: list[str] = field(default_factory=list)

    def get(self, name: str, *, config: str | None = None) -> Value | None:
        """The option's value, else its default (False for flags, [] if repeatable)."""
        values = self.values if config is None else self.configs[config]
        if name in values:
            return values[name]
        option = ACCEPTED[name]
        if option.kind == "flag":
            return False
        if option.repeatable:
            return [] if option.default is None else [option.default]
        return option.default


@dataclass(frozen=True)
class _Setting:
    """One validated use of an option."""

    prefix: str  # "" when unprefixed
    option: Option
    value: str | bool
    written: str  # the name as written, with any prefix, without dashes
    display: str  # for messages: "--name" on the command line, "option 'name'" in a file
    line: int = 0  # config-file line number; 0 for the command line
    raw: str | None = None  # the value as written (config file), None for none


class _Invalid(Exception):
    """A problem with one value; the caller adds where it happened."""


# ---------------------------------------------------------------------------
# names and prefixes


def _shape(written: str) -> Option | None:
    """The option a written name stands for, ignoring whether its prefix is declared."""
    if written in ACCEPTED:
        return ACCEPTED[written]
    prefix, _, rest = written.partition("-")
    return ACCEPTED.get(rest) if prefix else None


def _declared(written_names: Iterable[str]) -> list[str]:
    """Configuration prefixes declared by '<prefix>-spool-dir' names, in order."""
    found: list[str] = []
    for written in written_names:
        prefix, _, rest = written.partition("-")
        if written not in ACCEPTED and prefix and rest == DECLARING_OPTION and prefix not in found:
            found.append(prefix)
    return found


def _resolve(written: str, prefixes: Iterable[str]) -> tuple[str, Option] | None:
    """(prefix, option) for a written name, or None if it is not an option."""
    if written in ACCEPTED:
        return "", ACCEPTED[written]
    prefix, _, rest = written.partition("-")
    if prefix in prefixes and rest in ACCEPTED:
        return prefix, ACCEPTED[rest]
    return None


def _undeclared_hint(written: str) -> str:
    prefix, _, rest = written.partition("-")
    return MSG_UNDECLARED_HINT.format(prefix=prefix) if prefix and rest in ACCEPTED else ""


# ---------------------------------------------------------------------------
# values


def _convert(option: Option, value: str | None, opt: str, app_dir: str) -> str | bool:
    """Validate one value for an option (None: none given); raise _Invalid."""
    if option.kind == "flag":
        if value is not None:
            raise _Invalid(MSG_NO_VALUE_ALLOWED.format(opt=opt))
        return True
    if value is None:
        if option.optional_value:
            return True
        raise _Invalid(MSG_VALUE_REQUIRED.format(opt=opt))
    kind = option.kind
    if kind in ("int", "port") and not _NUMBER.fullmatch(value):
        raise _Invalid(MSG_BAD_NUMBER.format(opt=opt, value=value))
    if kind == "port" and int(value) > 65535:
        raise _Invalid(MSG_BAD_PORT.format(opt=opt, value=value))
    if kind == "int-list" and not _NUMBER_LIST.fullmatch(value):
        raise _Invalid(MSG_BAD_NUMBER_LIST.format(opt=opt, value=value))
    if kind == "assignments" and not _ASSIGNMENTS.fullmatch(value):
        raise _Invalid(MSG_BAD_ASSIGNMENTS.format(opt=opt, value=value))
    if kind == "address" and not value.strip():
        raise _Invalid(MSG_EMPTY_ADDRESS.format(opt=opt))
    if option.choices and value not in option.choices:
        raise _Invalid(MSG_BAD_CHOICE.format(opt=opt, value=value, choices=" or ".join(option.choices)))
    if kind == "path":
        value = value.replace(APP_DIR_TOKEN, app_dir)
    return value


# ---------------------------------------------------------------------------
# the command line


class _Uses:
    """The values given so far for each option, as E-MailRelay 2.6b compares them: a second use of
    a non-repeatable option with another value (none counts as ``""``) is a problem; flags are never
    duplicates."""

    def __init__(self) -> None:
        self.given: dict[str, str] = {}  # option (as written, prefix included) -> the value given first
        self.problems: list[str] = []  # every one is reported, as upstream does

    def add(self, written: str, option: Option, value: str | None, display: str) -> None:
        if option.metavar is None or option.repeatable or option.name in FIRST_WINS:
            return
        if self.given.setdefault(written, value or "") != (value or ""):
            self.problems.append(MSG_DUPLICATE.format(opt=display))


def _tokenize(argv: list[str]) -> tuple[list[tuple[str, str | None, str]], list[str], _Uses]:
    """Split argv into (written name, raw value or None, as typed), the non-option arguments and the
    uses seen (raises OptionError for what cannot be read)."""
    items: list[tuple[str, str | None, str]] = []
    positional: list[str] = []
    uses = _Uses()
    problems = uses.problems
    once = uses.add

    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional = argv[i:]
            break
        if arg.startswith("--"):
            written, eq, raw = arg[2:].partition("=")
            option = _shape(written)
            if option is None:
                problems.append(MSG_INVALID_OPTION.format(opt="--" + written))
                continue
            value: str | None = raw if eq else None
            if not eq and option.metavar is not None and not option.optional_value:
                if i >= len(argv):
                    problems.append(MSG_NO_VALUE_SUPPLIED.format(opt=f'"--{written}"'))
                    continue
                value = argv[i]
                i += 1
            once(written, option, value, "--" + option.name)  # upstream names it without a prefix
            items.append((written, value, "--" + written))
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                letter = arg[j]
                j += 1
                option = ACCEPTED_SHORT.get(letter)
                if option is None:
                    problems.append(MSG_INVALID_OPTION.format(opt="-" + letter))
                    continue
                value = None
                if option.metavar is not None and not option.optional_value:
                    if j < len(arg):
                        value, j = arg[j:], len(arg)
                    elif i < len(argv):
                        value = argv[i]
                        i += 1
                    else:
                        problems.append(MSG_NO_VALUE_SUPPLIED.format(opt="-" + letter))
                        continue
                once(option.name, option, value, "-" + letter)
                # (E-MailRelay 2.6b's -A hides nothing, unlike --anonymous: False, given but off)
                items.append((option.name, False if option.short_is_off else value, "-" + letter))
        else:
            positional = argv[i - 1 :]
            break
    if problems:
        raise OptionError(*problems)
    return items, positional, uses


# ---------------------------------------------------------------------------
# the config file


def _read_lines(path: str) -> list[tuple[str, str | None, int]]:
    """(written name, raw value or None, line number) for each option line."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(MSG_CANNOT_READ.format(reason=e.strerror or e), path=path) from e
    lines: list[tuple[str, str | None, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        comment = _TRAILING_COMMENT.search(line)
        if comment:
            line = line[: comment.start()].rstrip()
        parts = line.split(None, 1)
        name, value = parts[0], (parts[1] if len(parts) > 1 else None)
        if "=" in name and value is None:
            name, _, value = name.partition("=")
        lines.append((name, value, number))
    return lines


def _config_settings(path: str, app_dir: str, prefixes: Iterable[str]) -> tuple[list[_Setting], list[str]]:
    """Validated settings of a config file, and the prefixes it declares."""
    lines = _read_lines(path)
    declared = _declared(name for name, _, _ in lines)
    known = [*declared, *prefixes]
    settings = []
    for name, value, number in lines:
        resolved = _resolve(name, known)
        if resolved is None:
            text = MSG_UNKNOWN_CONFIG_OPTION.format(name=name) + _undeclared_hint(name)
            raise ConfigError(text, path=path, line=number)
        prefix, option = resolved
        display = f"option '{name}'"
        try:
            converted = _convert(option, value, display, app_dir)
        except _Invalid as e:
            raise ConfigError(str(e), path=path, line=number) from None
        settings.append(_Setting(prefix, option, converted, name, display, number, value))
    return settings, declared


def parse_config_file(
    path: str, *, app_dir: str, prefixes: Iterable[str] = ()
) -> list[tuple[str, str | None, int]]:
    """(name as written, value, line number) for each option in a config file.

    The value is None for flags and for an optional-value option without a
    value, else the validated string with ``@app`` replaced. ``prefixes`` adds
    configuration names declared elsewhere (eg. on the command line).
    Raises ConfigError naming the file (and line).
    """
    settings, _ = _config_settings(path, app_dir, prefixes)
    return [(s.written, s.value if isinstance(s.value, str) else None, s.line) for s in settings]


# ---------------------------------------------------------------------------
# putting it together


def _collect(settings: list[_Setting], first: str, warnings: list[str]) -> dict[tuple[str, str], Value]:
    """Settings (the command line's, then the config file's) keyed by (configuration, option name):
    a repeatable option's values accumulate in that order; a process-wide option of another
    configuration than the first is dropped without a word, as upstream. Collects warnings."""
    merged: dict[tuple[str, str], Value] = {}
    for s in settings:
        if s.option.process and s.prefix and s.prefix != first:
            continue
        key = (s.prefix or first, s.option.name)
        if s.option.repeatable:
            values = merged.setdefault(key, [])
            assert isinstance(values, list)
            values.append(str(s.value))
        elif key in merged and s.option.name in FIRST_WINS:
            warning = MSG_FIRST_WINS.format(name=s.option.name)
            if warning not in warnings:
                warnings.append(warning)
        elif merged.setdefault(key, s.value) != s.value:  # eg. --port and the first configuration's --in-port
            raise OptionError(MSG_DUPLICATE.format(opt="--" + s.option.name))
    return merged


def parse_command_line(argv: list[str], *, app_dir: str) -> Parsed:
    """Parse the arguments after the program name, reading the config file if one is given."""
    items, positional, uses = _tokenize(argv)
    config_file = positional[0] if positional else None
    cmd_prefixes = _declared(written for written, _, _ in items)

    file_settings: list[_Setting] = []
    file_prefixes: list[str] = []
    if config_file is not None:
        file_settings, file_prefixes = _config_settings(config_file, app_dir, cmd_prefixes)
        for s in file_settings:  # as if typed after the command line's options, as upstream reads it
            uses.add(s.written, s.option, s.raw, "--" + s.option.name)
        if uses.problems:
            raise OptionError(*uses.problems)
    if len(positional) > 1:  # reported once the first is read, as upstream does
        raise OptionUsageError(MSG_EXTRA_ARGUMENT, hint=True)
    prefixes = [*file_prefixes, *(p for p in cmd_prefixes if p not in file_prefixes)]

    cmd_settings: list[_Setting] = []
    for written, raw, typed in items:
        resolved = _resolve(written, prefixes)
        if resolved is None:
            raise OptionError(MSG_INVALID_OPTION.format(opt=typed) + _undeclared_hint(written))
        prefix, option = resolved
        try:
            value = _convert(option, raw, typed, app_dir)
        except _Invalid as e:
            raise UsageError(str(e)) from None
        cmd_settings.append(_Setting(prefix, option, value, written, "--" + written))

    first = prefixes[0] if prefixes else ""
    warnings: list[str] = []
    merged = _collect([*cmd_settings, *file_settings], first, warnings)

    configs: dict[str, dict[str, Value]] = {p: {} for p in (prefixes or [""])}
    for (config, name), value in merged.items():
        configs[config][name] = value
    parsed = Parsed(values=dict(configs[first]), config_file=config_file, configs=configs, warnings=warnings)
    if not (parsed.values.get("help") or parsed.values.get("version")):
        for name in configs:
            usage_rules.check(configuration_values(parsed, name))
    return parsed


def expand_shorthands(values: Mapping[str, Value]) -> dict[str, Value]:
    """Add what --as-client, --as-proxy and --as-server stand for (reference guide).

    The shorthand itself stays in the result. Implied flags are added;
    the shorthand's value becomes --forward-to, and a different explicit
    --forward-to is a UsageError.
    """
    out = dict(values)
    for shorthand, implied in SHORTHANDS.items():
        value = values.get(shorthand)
        if not value:
            continue
        for name in implied:
            out.setdefault(name, True)
        if isinstance(value, str):
            forward_to = out.get("forward-to")
            if forward_to is not None and forward_to != value:
                raise UsageError(MSG_SHORTHAND_CONFLICT.format(opt="--" + shorthand, other="--forward-to"))
            out["forward-to"] = value
    return out


def configuration_values(parsed: Parsed, name: str) -> dict[str, Value]:
    """One configuration's options, with the process-wide ones (which live in the first) added."""
    if name not in parsed.configs or name == next(iter(parsed.configs)):
        return dict(parsed.values)
    process_wide = {k: v for k, v in parsed.values.items() if ACCEPTED[k].process}
    return {**process_wide, **parsed.configs[name]}
