"""Command-line and config-file parsing for ``emailrelay``, driven by ``options.OPTIONS``.

What it accepts (reference guide, "Command line usage" and "Configuration"):

* ``--name=value``, ``--name value`` (options with a value), ``-x value``,
  ``-xvalue`` and getopt-style groups of short letters (``-dtF file``: a
  value-taking letter consumes the rest of the group or the next argument);
  ``--`` ends the options.
* Optional-value options (``--anonymous``, ``--syslog``) take a value only
  when written ``--name=value``; on their own, and in short form, they are
  flags.
* A flag takes a value as upstream's does: ``--log=no`` (``n``, ``no``, ``f``,
  ``false``, ``0``, ``off``, any case) turns it off, ``--log=yes`` (``y``,
  ``yes``, ``t``, ``true``, ``1``, ``on`` or nothing) on; any other value is
  an error, and so is a flag given both on and off.
* A separated long-form value that starts with ``-`` (``--as-client
  --no-daemon``) is refused as upstream's "probably a mistake"; short forms
  (``-p -1``) and ``--name=-x`` take it.
* One non-option argument, the config file, which must be last. Its lines
  hold one option each, as E-MailRelay 2.6b reads them: the name without
  dashes, ended by white space or ``=``; the value is the rest of the line
  after any white space and ``=`` (``port = 25``, ``port=25``), with one
  pair of enclosing double quotes removed; an empty value is no value. A
  line starting with ``#`` is a comment, and so (ours, docs/decisions.md) is
  ``#`` after white space in a value that does not start with a double quote
  (upstream keeps it: ``spool-dir /x # c`` is ``/x # c``); ``fd#3``
  survives. A line starting with ``-`` is ignored without a word, as
  upstream ignores it.
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
  command line's, as if typed there. The options upstream joins
  (``Option.joined``: ``--log-format``, ``--dnsbl``, the ``*-smtp-config``
  ones, ``--tls-config``) may be repeated, their values joined with commas;
  ``--localedir``'s first command-line use is not compared with the others
  (``EARLY_SCANNED``). Any other non-repeatable option given twice
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
  line for the config file (a missing value or a bad flag value there is an
  ``OptionError``, in upstream's words, and so is an unknown name there,
  ``invalid option: "--name"``; an unreadable file is upstream's
  ``error reading configuration file: <path>``). Upstream's rules for options that
  cannot be used together (``usage_rules``) are checked per configuration.
* ``--help`` (or ``help`` in the config file) wins over every problem but an
  unreadable config file: the result is then only ``help`` (and ``verbose``).
  ``--version`` skips the checks of values (numbers, ports, choices) and the
  rules, as upstream, but not unreadable options.
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

#: Options whose first use on the command line E-MailRelay 2.6b takes before parsing the rest (as
#: observed: ``--localedir=/a --localedir=/b`` is accepted, ``/a /b /a`` is a duplicate, as is
#: ``/a /b`` with ``localedir /a`` in the config file): the first use is not compared with the
#: others, and it is the one used.
EARLY_SCANNED: frozenset[str] = frozenset({"localedir"})

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
MSG_FLAG_VALUE = 'cannot give a value with "{opt}" ({value})'  # upstream's words
MSG_CONFLICTING = 'conflicting values: "{opt}"'  # ditto: a flag given on and off
MSG_MISTAKE = '"{opt} {value}" is probably a mistake, use "{opt}=... {value}" or "{opt}={value}"'  # ditto
MSG_BAD_NUMBER = "{opt}: invalid number '{value}'"
MSG_BAD_PORT = "{opt}: invalid port number '{value}'"
MSG_BAD_NUMBER_LIST = "{opt}: invalid list of numbers '{value}'"
MSG_BAD_ASSIGNMENTS = "{opt}: invalid value '{value}' (expected <name>=<number>,...)"
MSG_BAD_CHOICE = "{opt}: invalid value '{value}' (expected {choices})"
MSG_EMPTY_ADDRESS = "{opt}: empty address"
MSG_DUPLICATE = 'duplicate use of "{opt}"'  # upstream's words
MSG_SHORTHAND_CONFLICT = "{opt} conflicts with {other}"
MSG_EXTRA_ARGUMENT = "too many non-option arguments"  # upstream's words (a "usage error")
MSG_CANNOT_READ = "error reading configuration file: {path}"  # upstream's words
MSG_FIRST_WINS = "more than one --{name}: using the first"  # upstream's warning
MSG_UNDECLARED_HINT = " (no '--{prefix}-spool-dir' declares a configuration '{prefix}')"

_NUMBER = re.compile(r"[0-9]+")
_NUMBER_LIST = re.compile(r"[0-9]+(,[0-9]+)*")
_ASSIGNMENTS = re.compile(r"[A-Za-z0-9_-]+=[0-9]+(,[A-Za-z0-9_-]+=[0-9]+)*")
_NAME_END = re.compile(r"[ \t=]")  # what ends a name in a config-file line
_TRAILING_COMMENT = re.compile(r"\s#")
_WHITE_SPACE = " \t\r\n"

#: A flag's values as E-MailRelay 2.6b reads them (any case, white space around ignored).
FLAG_ON: frozenset[str] = frozenset({"", "y", "yes", "t", "true", "1", "on"})
FLAG_OFF: frozenset[str] = frozenset({"n", "no", "f", "false", "0", "off"})


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


def _invalid_option(written: str, typed: str | None = None) -> str:
    """Upstream's words for an option it does not know (a config-file line's name as ``--name``), with
    ours' hint for a configuration prefix that nothing declares."""
    return MSG_INVALID_OPTION.format(opt=typed or f"--{written}") + _undeclared_hint(written)


# ---------------------------------------------------------------------------
# values


def flag_state(value: str | None) -> bool | None:
    """Whether a flag given with ``value`` (None: none) is on; None if the value is not upstream's
    yes or no."""
    word = "" if value is None else value.strip(_WHITE_SPACE).lower()
    return True if word in FLAG_ON else False if word in FLAG_OFF else None


def _convert(
    option: Option, value: str | None, opt: str, app_dir: str, *, lenient: bool = False
) -> str | bool:
    """Validate one value for an option (None: none given); raise _Invalid. ``lenient`` (as with
    ``--version``) takes any value of an option that has one."""
    if option.kind == "flag":
        state = flag_state(value)
        if state is None:
            raise _Invalid(MSG_FLAG_VALUE.format(opt=opt, value=value))
        return state
    if value is None:
        if option.optional_value:
            return True
        raise _Invalid(MSG_NO_VALUE_SUPPLIED.format(opt=f'"{opt}"'))
    if not lenient:
        _check_value(option, value, opt)
    return value.replace(APP_DIR_TOKEN, app_dir) if option.kind == "path" else value


def _check_value(option: Option, value: str, opt: str) -> None:
    """Raise _Invalid if ``value`` is not one of ``option``'s kind."""
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


# ---------------------------------------------------------------------------
# the command line


class _Uses:
    """The values given so far for each option, as E-MailRelay 2.6b's option parser checks them (the
    command line's, then the config file's): a flag's value must be a yes or a no, and the same
    every time; a mandatory value must be there; a second use of a non-repeatable option with
    another value (none counts as ``""``) is a problem."""

    def __init__(self) -> None:
        self.given: dict[str, str] = {}  # option (as written, prefix included) -> the value given first
        self.flags: dict[str, bool] = {}  # flag (as written) -> on or off, as given first
        self.problems: list[str] = []  # every one is reported, as upstream does
        self.unknown = False  # an invalid option: upstream then goes no further than the command line

    def add(self, written: str, option: Option, value: str | None, display: str) -> None:
        if option.kind == "flag":
            self._add_flag(written, option, value)
        elif value is None and not option.optional_value:
            self.problems.append(MSG_NO_VALUE_SUPPLIED.format(opt=f'"--{written}"'))
        elif self._twice(written, option, value or ""):
            self.problems.append(MSG_DUPLICATE.format(opt=display))

    def _twice(self, written: str, option: Option, value: str) -> bool:
        """Whether this use repeats an option that takes one value, with another value."""
        if option.repeatable or option.joined or option.name in FIRST_WINS:
            return False
        return self.given.setdefault(written, value) != value

    def _add_flag(self, written: str, option: Option, value: str | None) -> None:
        state = flag_state(value)
        if state is None:
            self.problems.append(MSG_FLAG_VALUE.format(opt="--" + written, value=value))
        elif self.flags.setdefault(written, state) != state:
            self.problems.append(MSG_CONFLICTING.format(opt="--" + option.name))


def _tokenize(argv: list[str]) -> tuple[list[tuple[str, str | None, str]], list[str], _Uses]:
    """Split argv into (written name, raw value or None, as typed), the non-option arguments and the
    uses seen, with the problems of what cannot be read."""
    items: list[tuple[str, str | None, str]] = []
    positional: list[str] = []
    uses = _Uses()
    problems = uses.problems
    early: set[str] = set()

    def once(written: str, option: Option, value: str | None, display: str) -> None:
        if option.name in EARLY_SCANNED and written not in early:
            early.add(written)
        else:
            uses.add(written, option, value, display)

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
                uses.unknown = True
                continue
            value: str | None = raw if eq else None
            if not eq and option.metavar is not None and not option.optional_value:
                if i >= len(argv):
                    problems.append(MSG_NO_VALUE_SUPPLIED.format(opt=f'"--{written}"'))
                    continue
                value = argv[i]
                i += 1
                if value.startswith("-"):  # upstream names it without a prefix
                    problems.append(MSG_MISTAKE.format(opt="--" + option.name, value=value))
                    continue
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
                    uses.unknown = True
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
    return items, positional, uses


# ---------------------------------------------------------------------------
# the config file


Line = tuple[str, str | None, int]  # (written name, raw value or None, line number)


def _read_lines(path: str) -> list[Line]:
    """Each option line of a config file (raises ConfigError if it cannot be read)."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:  # (a directory too, which upstream reads as an empty file)
        raise ConfigError(MSG_CANNOT_READ.format(path=path)) from e
    lines: list[Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip(_WHITE_SPACE)
        if line and line[0] not in "#-":  # a comment; a dashed line, which upstream ignores
            lines.append((*_split_line(line), number))
    return lines


def _split_line(line: str) -> tuple[str, str | None]:
    """(name, value or None) of a config-file line, as upstream splits it: the name ends at white
    space or "="; white space and "=" after it are dropped; enclosing double quotes go. A trailing
    comment goes first, unless the value starts with a double quote (ours: upstream keeps it)."""
    end = _NAME_END.search(line)
    if end is None:
        return line, None
    value = line[end.start() :].lstrip(_WHITE_SPACE + "=")
    comment = None if value.startswith('"') else _TRAILING_COMMENT.search(value)
    if comment:
        value = value[: comment.start()].rstrip(_WHITE_SPACE)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return line[: end.start()], value or None


def _config_settings(
    path: str, lines: list[Line], app_dir: str, prefixes: Iterable[str], *, lenient: bool = False
) -> tuple[list[_Setting], list[str]]:
    """Validated settings of a config file's lines, and the prefixes it declares."""
    declared = _declared(name for name, _, _ in lines)
    known = [*declared, *prefixes]
    settings = []
    for name, value, number in lines:
        resolved = _resolve(name, known)
        if resolved is None:  # (parse_command_line reports it first, with the other problems)
            raise OptionError(_invalid_option(name))
        prefix, option = resolved
        display = f"option '{name}'"
        try:
            converted = _convert(option, value, display, app_dir, lenient=lenient)
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
    settings, _ = _config_settings(path, _read_lines(path), app_dir, prefixes)
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
        elif s.option.joined and key in merged:
            merged[key] = f"{merged[key]},{s.value}"
        elif key in merged and s.option.name in FIRST_WINS | EARLY_SCANNED:
            warning = MSG_FIRST_WINS.format(name=s.option.name) if s.option.name in FIRST_WINS else None
            if warning and warning not in warnings:
                warnings.append(warning)
        elif merged.setdefault(key, s.value) != s.value:  # eg. --port and the first configuration's --in-port
            raise OptionError(MSG_DUPLICATE.format(opt="--" + s.option.name))
    return merged


def _asked(given: Iterable[tuple[str, str | None]], name: str) -> bool:
    """Whether flag ``name`` is on among (written name, raw value) pairs: given with a yes, never a no."""
    states = [flag_state(value) for written, value in given if written == name]
    return True in states and False not in states


def _help_only(given: list[tuple[str, str | None]], config_file: str | None) -> Parsed:
    """What --help leaves of the options: itself and --verbose."""
    values: dict[str, Value] = {"help": True, **({"verbose": True} if _asked(given, "verbose") else {})}
    return Parsed(values=values, config_file=config_file, configs={"": dict(values)})


def parse_command_line(argv: list[str], *, app_dir: str) -> Parsed:
    """Parse the arguments after the program name, reading the config file if one is given.

    As E-MailRelay 2.6b: --help wins over every problem but an unreadable config file (with an
    invalid option on the command line, only over the command line's problems, since the config
    file is then not read); --version over the values' checks and the rules."""
    items, positional, uses = _tokenize(argv)
    config_file = positional[0] if positional else None
    given = [(written, raw) for written, raw, _ in items]
    if uses.unknown:
        if _asked(given, "help"):
            return _help_only(given, config_file)
        raise OptionError(*uses.problems)
    lines = _read_lines(config_file) if config_file is not None else []
    known = _declared([*(name for name, _, _ in lines), *(written for written, _, _ in items)])
    for name, raw, _ in lines:  # as if typed after the command line's options, as upstream reads them
        resolved = _resolve(name, known)
        if resolved is None:
            uses.problems.append(_invalid_option(name))  # upstream's words, as on the command line
        else:
            uses.add(name, resolved[1], raw, "--" + resolved[1].name)
    given += [(name, raw) for name, raw, _ in lines]
    if _asked(given, "help"):
        return _help_only(given, config_file)
    if uses.problems:
        raise OptionError(*uses.problems)
    return _settle(items, positional, lines, app_dir, lenient=_asked(given, "version"))


def _settle(
    items: list[tuple[str, str | None, str]],
    positional: list[str],
    lines: list[Line],
    app_dir: str,
    *,
    lenient: bool,
) -> Parsed:
    """The readable options (command line, config file lines) validated, merged into
    configurations and checked against upstream's rules (not when ``lenient``, as with --version)."""
    config_file = positional[0] if positional else None
    cmd_prefixes = _declared(written for written, _, _ in items)
    file_settings: list[_Setting] = []
    file_prefixes: list[str] = []
    if config_file is not None:
        file_settings, file_prefixes = _config_settings(
            config_file, lines, app_dir, cmd_prefixes, lenient=lenient
        )
    if len(positional) > 1:  # reported once the first is read, as upstream does
        raise OptionUsageError(MSG_EXTRA_ARGUMENT, hint=True)
    prefixes = [*file_prefixes, *(p for p in cmd_prefixes if p not in file_prefixes)]

    cmd_settings: list[_Setting] = []
    for written, raw, typed in items:
        resolved = _resolve(written, prefixes)
        if resolved is None:
            raise OptionError(_invalid_option(written, typed))
        prefix, option = resolved
        try:
            value = _convert(option, raw, typed, app_dir, lenient=lenient)
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
    if not lenient:
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
