"""E-MailRelay 2.6b's command-line reading, for the programs beside the relay.

What it is for: ``emailrelay-submit`` (:mod:`emailrelay.cli.submit`) and ``emailrelay-passwd``
(:mod:`emailrelay.cli.passwd`) read their options as E-MailRelay 2.6b's option parser reads
them; each gives its own table of :class:`Option` and :func:`tokenize` does the reading, so the
two programs cannot drift apart. The relay's own reader (:mod:`emailrelay.cli.parse`) is another
one on purpose -- it also takes ``-xvalue``, configuration prefixes, a config file and options
read early -- and this module only borrows its words (the ``MSG_*`` texts) and its reading of a
flag's value (:func:`~emailrelay.cli.parse.flag_state`).

Guarantees (checked side by side with E-MailRelay 2.6b's ``emailrelay-submit`` and
``emailrelay-passwd``; tests/unit/test_upstream_getopt.py): :func:`tokenize` never raises for any argument list and returns what was
given (:class:`Given`) with every problem, in upstream's words and in the order met:

* options end at ``--`` (not kept) or at the first argument that is not an option (``-`` alone
  is not one); what follows is :attr:`Given.rest`;
* long names are whole (no abbreviations): ``--name=value``, or ``--name value`` unless that
  value starts with ``-`` -- then ``"--name -x" is probably a mistake, ...`` and the ``-x`` is
  taken up all the same; the last argument without its value is ``no value supplied for "--name"``;
* a letter that takes a value stands alone and its value is the next argument, whatever it is;
  in a group of letters, or last, it is ``no value supplied for -x``;
* a flag takes a yes or a no after ``=`` (``flag_state``: any case, blanks around ignored),
  anything else is ``cannot give a value with "--name" (value)``; given on and off it is
  ``conflicting values: "--name"``; :attr:`Given.flags` keeps them in the order first given;
* a value option given again with another value is ``duplicate use of "<as typed>"`` (the
  first value is kept; the same value again passes); a repeatable one collects every value;
* an optional-value option (``kind="optional"``) never takes the next argument: the long name
  alone is the value ``""``; the letter alone adds nothing once the option is given and is
  otherwise :data:`None`, a value that differs from every one given later by name
  (``-I --content-message-id`` is a duplicate, ``--content-message-id -I`` is not).

What the programs do with the result (defaults, help, errors' prefix and exit code) is theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .parse import (
    MSG_CONFLICTING,
    MSG_DUPLICATE,
    MSG_FLAG_VALUE,
    MSG_INVALID_OPTION,
    MSG_MISTAKE,
    MSG_NO_VALUE_SUPPLIED,
    flag_state,
)

Kind = Literal["flag", "value", "values", "optional"]


@dataclass(frozen=True)
class Option:
    """One option: its long ``name``, its letter (``""``: none) and what it takes -- ``flag``;
    ``value``, given once; ``values``, repeatable; ``optional``, a value only after ``=``. ``arg``
    names the value in the help; ``text``, ``basic`` (in the short help) and ``hidden`` (not in
    any help) are for the program's help."""

    name: str
    short: str = ""
    kind: Kind = "flag"
    arg: str = ""
    text: str = ""
    basic: bool = False
    hidden: bool = False

    def help_left(self) -> str:
        """The help's left column, as upstream lays it out: ``  -x, --name=<arg>``."""
        value = {"value": f"=<{self.arg}>", "values": f"=<{self.arg}>", "optional": f"[=<{self.arg}>]"}
        return f"  {'-' + self.short + ',' if self.short else '   '} --{self.name}{value.get(self.kind, '')}"


@dataclass
class Given:
    """What a command line gave: ``values`` of single-valued options (None: an optional-value
    option's letter alone), ``lists`` of repeatable ones, ``flags`` on or off (in the order first
    given), the ``rest`` after the options, and the ``problems``, in order."""

    values: dict[str, str | None] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    rest: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def on(self, name: str) -> bool:
        """Whether flag ``name`` is on."""
        return self.flags.get(name, False)

    def _value(self, option: Option, value: str, typed: str) -> None:
        if option.kind == "values":
            self.lists.setdefault(option.name, []).append(value)
        elif self.values.setdefault(option.name, value) != value:
            self.problems.append(MSG_DUPLICATE.format(opt=typed))

    def _flag(self, option: Option, value: str | None) -> None:
        state = flag_state(value)
        if state is None:
            self.problems.append(MSG_FLAG_VALUE.format(opt="--" + option.name, value=value))
        elif self.flags.setdefault(option.name, state) != state:
            self.problems.append(MSG_CONFLICTING.format(opt="--" + option.name))


def tokenize(argv: list[str], options: Iterable[Option]) -> Given:
    """``argv`` (without the program's name) read against ``options`` as upstream reads it (the
    module's guarantees)."""
    table = tuple(options)
    by_name = {o.name: o for o in table}
    by_letter = {o.short: o for o in table if o.short}
    given = Given()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            given.rest = argv[i:]
            break
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            typed = "--" + name
            option = by_name.get(name)
            if option is None:
                given.problems.append(MSG_INVALID_OPTION.format(opt=typed))
            elif option.kind == "flag":
                given._flag(option, raw if eq else None)
            elif eq or option.kind == "optional":
                given._value(option, raw, typed)
            elif i >= len(argv):
                given.problems.append(MSG_NO_VALUE_SUPPLIED.format(opt=f'"{typed}"'))
            elif argv[i].startswith("-"):
                given.problems.append(MSG_MISTAKE.format(opt=typed, value=argv[i]))
                i += 1
            else:
                given._value(option, argv[i], typed)
                i += 1
        elif arg.startswith("-") and arg != "-":
            letters = arg[1:]
            for letter in letters:
                option = by_letter.get(letter)
                typed = "-" + letter
                if option is None:
                    given.problems.append(MSG_INVALID_OPTION.format(opt=typed))
                elif option.kind == "flag":
                    given._flag(option, None)
                elif option.kind == "optional":
                    given.values.setdefault(option.name, None)
                elif len(letters) == 1 and i < len(argv):
                    given._value(option, argv[i], typed)
                    i += 1
                else:
                    given.problems.append(MSG_NO_VALUE_SUPPLIED.format(opt=typed))
        else:
            given.rest = argv[i - 1 :]
            break
    return given
