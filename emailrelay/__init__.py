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
#: The OpenSSL notice (the product uses OpenSSL through Python's ssl module): upstream's, word for word.
OPENSSL_NOTICE = (
    "This product includes software developed by the OpenSSL Project",
    "for use in the OpenSSL Toolkit (http://www.openssl.org/)",
)
#: Upstream's warranty lines, trailing spaces included (--version, the admin ``info warranty``).
WARRANTY = (
    "This program comes with ABSOLUTELY NO WARRANTY.",
    "This is free software, and you are welcome to ",
    "redistribute it under certain conditions. For ",
    "more information refer to the file named COPYING.",
)
