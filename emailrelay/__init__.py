"""emailrelay: a store-and-forward SMTP relay and proxy compatible with E-MailRelay 2.6.

The package is layered (see ARCHITECTURE.md and docs/decisions.md):
cli -> services -> (spool, policy, auth, bus) -> protocol.
"""

__version__ = "2.6.0"
#: The version string shown in SMTP greetings and --version, upstream style.
PRODUCT_VERSION = "2.6"
