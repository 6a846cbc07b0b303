"""Texts generated from the option table: --help, --help --verbose, --version, Markdown docs.

Everything here is rendered from ``options.OPTIONS`` so help and documentation
cannot drift from what the parser accepts. Plain ``--help`` lists the
``common`` options and points at ``--help --verbose``, which lists every
option with its default; both end with the operator tools
(``emailrelay queue`` ...); both begin with the version line and a blank
line, as upstream's do. ``--version`` is laid out line for line as
E-MailRelay 2.6b's (its own version and copyright lines aside); with
``--verbose`` it adds the build's features, one per line, the TLS library
being the OpenSSL Python's ``ssl`` module runs on. ``markdown_reference()``
renders the whole table for docs/.
"""

from __future__ import annotations

import ssl

from emailrelay import COPYRIGHT, OPENSSL_NOTICE, VERSION_LINE, WARRANTY
from emailrelay.cli.options import OPTIONS, SECTIONS, Option

USAGE = "usage: {program} [<option> [<option> ...]] [<config-file>]"
# The build's features as upstream's --version --verbose names them: all of them are always there.
FEATURES = ("Multi-threading", "Unix domain sockets", "POP server", "Admin server")
_MAX_LEFT = 42  # wider option columns put the help on the next line


def option_syntax(option: Option) -> str:
    """``--name``, ``--name=<value>`` or ``--name[=<value>]``."""
    if option.metavar is None:
        return f"--{option.name}"
    if option.optional_value:
        return f"--{option.name}[=<{option.metavar}>]"
    return f"--{option.name}=<{option.metavar}>"


def _left(option: Option) -> str:
    short = f"-{option.short}, " if option.short else "    "
    return f"  {short}{option_syntax(option)}"


def _sections(verbose: bool, windows: bool = False) -> list[tuple[str, list[Option]]]:
    """(section, options shown) in display order, without empty sections; the Windows-only options
    (invalid on unix, as in E-MailRelay 2.6b's unix build) only with ``windows``."""
    shown = [o for o in OPTIONS if (verbose or o.common) and (windows or not o.windows_only)]
    grouped = [(s, [o for o in shown if o.section == s]) for s in SECTIONS]
    return [(s, opts) for s, opts in grouped if opts]


def help_text(verbose: bool, program: str = "emailrelay") -> str:
    """The text of ``--help`` (common options) or ``--help --verbose`` (all of them)."""
    sections = _sections(verbose)
    width = min(_MAX_LEFT, max(len(_left(o)) for _, opts in sections for o in opts))
    lines = [VERSION_LINE, "", USAGE.format(program=program)]
    for section, opts in sections:
        lines += ["", f"{section} options:"]
        for o in opts:
            text = o.help
            if verbose and o.default is not None:
                text += f" (default: {o.default})"
            left = _left(o)
            if len(left) > width:
                lines += [left, " " * (width + 2) + text]
            else:
                lines.append(f"{left.ljust(width)}  {text}")
    lines.append("")
    if verbose:
        lines += [
            "The config file holds one option per line, without the leading dashes:",
            '"spool-dir /var/spool/emailrelay". "@app" in file names is the program\'s directory.',
        ]
    else:
        lines.append(f'For complete usage information run "{program} --help --verbose"')
    lines += ["", *tools_text(program)]
    return "\n".join(lines) + "\n"


def tools_text(program: str = "emailrelay") -> list[str]:
    """The operator tools (ours, after upstream's text): one line each, from the tools table."""
    from emailrelay.cli.tools import TOOLS

    width = max(len(t.name) for t in TOOLS)
    return [
        f'Tools, run as "{program} <tool> ..." (see "{program} <tool> --help"):',
        *(f"  {t.name.ljust(width)}  {t.summary}" for t in TOOLS),
    ]


def version_text(verbose: bool = False) -> str:
    """The text of ``--version`` (with ``verbose``, of ``--version --verbose``)."""
    lines = [VERSION_LINE, "", COPYRIGHT, ""]
    if verbose:
        lines += [f"{feature}: enabled" for feature in FEATURES]
        lines += [f"TLS library: {ssl.OPENSSL_VERSION}", ""]
    lines += [*OPENSSL_NOTICE, "", *WARRANTY]
    return "\n".join(lines) + "\n"


def _notes(option: Option) -> list[str]:
    notes = []
    if option.optional_value:
        notes.append("The value is optional and is given only with `=`.")
    if option.repeatable:
        notes.append("May be given more than once; the values accumulate.")
    if option.choices:
        notes.append("One of " + ", ".join(f"`{c}`" for c in option.choices) + ".")
    if option.default is not None:
        notes.append(f"Default: `{option.default}`.")
    if option.process:
        notes.append("Process-wide (with multiple configurations, only the first one's counts).")
    if option.windows_only:
        notes.append("Windows only: an invalid option on unix, as in E-MailRelay 2.6b (not in `--help`).")
    return notes


def markdown_reference(program: str = "emailrelay") -> str:
    """Every option of the table as a Markdown reference (for docs/)."""
    lines = [
        f"# `{program}` command-line options",
        "",
        "<!-- Generated by emailrelay.cli.helptext.markdown_reference() from emailrelay/cli/options.py;"
        " do not edit by hand. -->",
        "",
        f"    {USAGE.format(program=program)[len('usage: ') :]}",
        "",
        "The optional config file, given last, holds one option per line without the",
        "leading dashes, name and value separated by white space; `#` starts a comment.",
        "`@app` in file names stands for the directory of the program. Prefixing",
        "`spool-dir` with a name (`in-spool-dir`) starts another configuration whose",
        "options carry the same prefix (`in-port`). Options given on the command line",
        "override those in the config file.",
    ]
    for section, opts in _sections(verbose=True, windows=True):
        lines += ["", f"## {section} options", ""]
        for o in opts:
            short = f" (`-{o.short}`)" if o.short else ""
            text = " ".join([o.help[0].upper() + o.help[1:] + ".", *_notes(o)])
            lines.append(f"* `{option_syntax(o)}`{short}: {text}")
    return "\n".join(lines) + "\n"
