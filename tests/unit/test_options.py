"""The option table: its invariants, its agreement with the reference guide, and the texts made from it.

The guide's option list is quoted in tests/support/guides.py, so the table is
checked against it on any clone; ``test_quoted_option_lines_match_the_guide``
compares that quotation with the guide itself when ``EMAILRELAY_GUIDES`` is set.
"""

from __future__ import annotations

import re
import ssl

import pytest

from emailrelay import PRODUCT_VERSION, __version__
from emailrelay.cli.helptext import help_text, markdown_reference, option_syntax, version_text
from emailrelay.cli.options import BY_NAME, BY_SHORT, KINDS, OPTIONS, SECTIONS, Option
from emailrelay.cli.tools import SUBCOMMANDS
from tests.support.guides import REFERENCE, REFERENCE_OPTION_LINES, guide_text, option_lines

# Where we knowingly differ from the guide's option list.
NO_SHORT_DESPITE_GUIDE: set[str] = set()  # (the guide's "-s" for --delivery-dir is E-MailRelay 2.6b's too)
VALUE_NOT_SHOWN_IN_GUIDE = {"log-format"}  # the guide omits the metavar but the option takes a value
SEED_NAMES = {"verifier", "scanner"}  # the old user guide's option names, kept as aliases
SUPERVISOR = {o.name for o in OPTIONS if o.section == "Supervisor"} | SEED_NAMES  # not in the 2.6 guide

GUIDE_LINE = re.compile(
    r"^\*\s+\\-\\-(?P<name>[a-z0-9-]+)\s*(?P<value>\[?=?&lt;[^&]*&gt;\]?)?\s*(?:\(-(?P<short>.)\))?\s*$"
)


def guide_options() -> dict[str, tuple[str | None, str | None]]:
    """name -> (short letter, value syntax) for every option documented in the guide (as quoted)."""
    found = {}
    for line in REFERENCE_OPTION_LINES:
        m = GUIDE_LINE.match(line)
        assert m, f"unparsed guide option line: {line!r}"
        found[m["name"]] = (m["short"], m["value"])
    return found


def test_quoted_option_lines_match_the_guide() -> None:
    assert option_lines(guide_text(REFERENCE)) == list(REFERENCE_OPTION_LINES)


class TestAgainstGuide:
    def test_guide_lists_many_options(self) -> None:
        assert len(guide_options()) >= 70

    @pytest.mark.parametrize("name", [o.name for o in OPTIONS])
    def test_each_table_option_is_in_guide_or_ours(self, name: str) -> None:
        assert (name in guide_options()) != (name in SUPERVISOR)

    def test_every_guide_option_in_table_with_its_short_letter(self) -> None:
        for name, (short, _) in guide_options().items():
            assert name in BY_NAME, f"--{name} missing from OPTIONS"
            expected = None if name in NO_SHORT_DESPITE_GUIDE else short
            assert BY_NAME[name].short == expected, name

    def test_value_syntax_matches_guide(self) -> None:
        for name, (_, value) in guide_options().items():
            option = BY_NAME[name]
            if value is None:
                assert (option.metavar is None) != (name in VALUE_NOT_SHOWN_IN_GUIDE), name
            else:
                assert option.metavar is not None, name
                assert option.optional_value == value.startswith("[="), name

    def test_guide_order(self) -> None:
        ours = [o.name for o in OPTIONS if o.name not in SUPERVISOR]
        assert ours == list(guide_options())

    def test_delivery_dir_quirk_is_still_in_guide(self) -> None:
        assert guide_options()["delivery-dir"][0] == "s"


class TestTable:
    def test_names_unique(self) -> None:
        assert len(BY_NAME) == len(OPTIONS)

    def test_short_letters_unique(self) -> None:
        """Each letter names one option but ``-s``: listed for --spool-dir and --delivery-dir and
        taken as --delivery-dir, as E-MailRelay 2.6b."""
        shorts = [o.short for o in OPTIONS if o.short]
        assert len(shorts) == len(set(shorts)) + 1 == len(BY_SHORT) + 1
        assert [o.name for o in OPTIONS if o.short == "s"] == ["spool-dir", "delivery-dir"]
        assert BY_SHORT["s"].name == "delivery-dir"

    @pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
    def test_row_is_consistent(self, option: Option) -> None:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", option.name)
        assert option.short is None or len(option.short) == 1
        assert option.section in SECTIONS
        assert option.kind in KINDS
        assert (option.kind == "flag") == (option.metavar is None)
        assert option.help and "\n" not in option.help
        if option.optional_value:
            assert option.metavar is not None and not option.repeatable
        if option.choices:
            assert option.default is None or option.default in option.choices
        if option.name in SUPERVISOR - SEED_NAMES:
            assert option.section == "Supervisor" and option.short is None

    def test_sections_in_order(self) -> None:
        order = [SECTIONS.index(o.section) for o in OPTIONS]
        assert order == sorted(order)

    @pytest.mark.parametrize(
        ("name", "default"),
        [
            ("port", "25"),
            ("pop-port", "110"),
            ("connection-timeout", "40"),
            ("idle-timeout", "60"),
            ("response-timeout", "60"),
            ("filter-timeout", "60"),
            ("prompt-timeout", "20"),
            ("spool-dir", "/var/spool/emailrelay"),
            ("user", "daemon"),
        ],
    )
    def test_defaults(self, name: str, default: str) -> None:
        assert BY_NAME[name].default == default

    def test_back_off_is_off_unless_retry_is_given(self) -> None:
        """No default for --retry: giving it is what turns back-off on (docs/decisions.md)."""
        assert BY_NAME["retry"].default is None and BY_NAME["give-up"].default is None
        assert "turn on back-off" in BY_NAME["retry"].help and "with --retry" in BY_NAME["give-up"].help

    def test_special_rows(self) -> None:
        assert {o.name for o in OPTIONS if o.repeatable} == {
            "interface",
            "filter",  # repeated, a chain (the user guide's advanced set-up)
            "client-filter",
            "client-tls-certificate",
            "server-tls-certificate",
        }
        assert {o.name for o in OPTIONS if o.optional_value} == {"anonymous", "syslog"}
        assert {o.name for o in OPTIONS if o.windows_only} == {"hidden", "show"}
        assert BY_NAME["delivery-dir"].short == "s"  # as E-MailRelay 2.6b, which takes -s as it
        for name in (
            "spool-dir",
            "pid-file",
            "log-file",
            "filter",
            "client-filter",
            "server-auth",
            "client-auth",
            "pop-auth",
            "delivery-dir",
            "server-tls-certificate",
            "address-verifier",
        ):
            assert BY_NAME[name].kind == "path", name


def listed(text: str) -> list[str]:
    """The long names of the option rows of a help text."""
    return re.findall(r"^  (?:-., |    )--([a-z0-9-]+)", text, re.M)


class TestHelp:
    def test_version_then_usage_line(self) -> None:
        for verbose in (False, True):
            assert help_text(verbose).splitlines()[:3] == [
                f"E-MailRelay V{PRODUCT_VERSION} (emailrelay-python {__version__})",
                "",
                "usage: emailrelay [<option> [<option> ...]] [<config-file>]",
            ]

    def test_plain_help_shows_common_options_only(self) -> None:
        text = help_text(False)
        assert listed(text) == [o.name for o in OPTIONS if o.common]
        pointer = 'For complete usage information run "emailrelay --help --verbose"'
        assert pointer in text.splitlines()  # upstream's last line; the tools come after it

    def test_help_lists_the_tools(self) -> None:
        for verbose in (False, True):
            lines = help_text(verbose).splitlines()
            at = lines.index('Tools, run as "emailrelay <tool> ..." (see "emailrelay <tool> --help"):')
            assert lines[at - 1] == "" and [line.split()[0] for line in lines[at + 1 :]] == list(SUBCOMMANDS)
            assert all(re.match(r"^  [a-z]+ +[a-z]", line) for line in lines[at + 1 :])

    def test_verbose_help_shows_every_option(self) -> None:
        text = help_text(True)
        assert listed(text) == [o.name for o in OPTIONS if not o.windows_only]
        assert "--hidden" not in text and "--show" not in text  # invalid options on unix, as upstream's
        for o in OPTIONS:
            if o.windows_only:
                continue
            short = f"-{o.short}, " if o.short else "    "
            assert f"  {short}{option_syntax(o)}" in text, o.name
        assert "--help --verbose" not in text

    def test_row_format(self) -> None:
        text = help_text(False)
        assert re.search(r"^  -s, --spool-dir=<dir>\s{2,}directory holding messages", text, re.M)
        assert re.search(r"^      --address-verifier=<program>\s{2,}run a program", text, re.M)
        assert "  -A, --anonymous[=<scope>]" in help_text(True)

    def test_verbose_shows_defaults_and_sections(self) -> None:
        text = help_text(True)
        assert "(default: 25)" in text
        for section in SECTIONS:
            assert f"\n{section} options:\n" in text

    def test_program_name(self) -> None:
        assert help_text(False, program="relay").splitlines()[2].startswith("usage: relay ")

    def test_markdown_reference_lists_every_option(self) -> None:
        text = markdown_reference()
        for o in OPTIONS:
            assert f"* `{option_syntax(o)}`" in text, o.name
            if o.short:
                assert f"`{option_syntax(o)}` (`-{o.short}`)" in text
            if o.default:
                assert f"Default: `{o.default}`" in text
        for section in SECTIONS:
            assert f"## {section} options" in text


def test_version() -> None:
    text = version_text()
    assert text.startswith(f"E-MailRelay V{PRODUCT_VERSION} (emailrelay-python {__version__})\n\nCopyright ")
    assert text.endswith("\nmore information refer to the file named COPYING.\n")
    assert "enabled" not in text and "TLS library" not in text


def test_version_verbose_lists_the_features_one_per_line() -> None:
    lines = version_text(verbose=True).splitlines()
    at = lines.index("Multi-threading: enabled")
    assert lines[at : at + 6] == [
        "Multi-threading: enabled",
        "Unix domain sockets: enabled",
        "POP server: enabled",
        "Admin server: enabled",
        f"TLS library: {ssl.OPENSSL_VERSION}",
        "",
    ]
    assert [x for x in lines if x not in lines[at : at + 6]] == [x for x in version_text().splitlines() if x]
