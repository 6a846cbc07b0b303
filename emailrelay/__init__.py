"""emailrelay: a store-and-forward SMTP relay and proxy compatible with E-MailRelay 2.6.

The package is layered (see ARCHITECTURE.md and docs/decisions.md):
cli -> services -> (spool, policy, auth, bus) -> protocol.
"""

__version__ = "2.6.0"
#: The version string shown in SMTP greetings and --version, upstream style.
PRODUCT_VERSION = "2.6"
#: The first line of --version, --help and the admin ``info version``.
VERSION_LINE = f"E-MailRelay V{PRODUCT_VERSION} (emailrelay-python {__version__})"
#: Ours, not upstream's: E-MailRelay's author, and who wrote this implementation (docs/decisions.md).
COPYRIGHT = (
    "Copyright (C) 2001-2024 Graeme Walker (E-MailRelay); Python implementation by the emailrelay authors"
)
