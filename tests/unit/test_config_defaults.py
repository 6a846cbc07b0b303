"""Each option default is written once (issue 18, structure): ``config.OPTION_DEFAULTS``.

The option table shows it (``--help --verbose``, the reference), and both a bare :class:`Config`
and one built from an empty command line carry it, converted to the field's type.
"""

from __future__ import annotations

from pathlib import Path

from emailrelay.cli.options import BY_NAME
from emailrelay.config import OPTION_DEFAULTS, Config, from_values

#: option -> (Config field, the default as that field holds it)
FIELDS = {
    "spool-dir": ("spool_dir", Path),
    "port": ("port", int),
    "idle-timeout": ("idle_timeout", float),
    "prompt-timeout": ("prompt_timeout", float),
    "filter-timeout": ("filter_timeout", float),
    "connection-timeout": ("connection_timeout", float),
    "response-timeout": ("response_timeout", float),
    "user": ("user", str),
    "pop-port": ("pop_port", int),
}


def test_the_option_table_shows_the_one_default() -> None:
    for name, value in OPTION_DEFAULTS.items():
        assert BY_NAME[name].default == value, name


def test_config_fields_hold_the_option_defaults() -> None:
    assert set(FIELDS) == set(OPTION_DEFAULTS) - {"notify"}  # notify: Config.notify_polling, below
    bare, built = Config(), from_values({})
    for name, (field, convert) in FIELDS.items():
        expected = convert(OPTION_DEFAULTS[name])
        assert getattr(bare, field) == expected, name
        assert getattr(built, field) == expected, name
    assert OPTION_DEFAULTS["notify"] == "inotify" and not bare.notify_polling and not built.notify_polling
