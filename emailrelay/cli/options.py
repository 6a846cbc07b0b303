"""The one table of emailrelay command-line options.

``OPTIONS`` lists every option of the E-MailRelay 2.6 reference guide, in the
guide's order and with the guide's short letters, followed by our own
"Supervisor" options. Everything that knows about options is driven by this
table and nothing else: argv and config-file parsing and validation
(``parse.py``), ``--help`` / ``--help --verbose`` and the generated Markdown
reference (``helptext.py``).

Guarantees (checked by tests/unit/test_options.py):

* every long option of reference-2.6.md is here, with the guide's short
  letter, and every short letter is used once;
* ``metavar is None`` exactly for flags (``kind == "flag"``), except that
  optional-value options (``--anonymous[=<scope>]``, ``--syslog[=<facility>]``)
  have a metavar but take a value only when written with ``=``;
* ``joined`` marks the options E-MailRelay 2.6b takes more than once,
  joining the values with commas (``--log-format=time --log-format=address``
  is ``--log-format=time,address``; ``--localedir`` is another story:
  ``parse.EARLY_SCANNED``);
* ``default`` is given where the guide states one; it is a string, as if the
  operator had typed it, written once in ``config.OPTION_DEFAULTS`` (which
  ``Config`` also reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import OPTION_DEFAULTS

#: Help sections, in display order ("Supervisor" holds our extensions).
SECTIONS: tuple[str, ...] = (
    "Basic",
    "SMTP client",
    "SMTP server",
    "POP server",
    "Admin server",
    "Authentication",
    "TLS",
    "Process",
    "Logging",
    "Supervisor",
)

#: Value kinds, used for validation:
#:   flag         no value
#:   str          any string
#:   int          a non-negative decimal integer
#:   port         an int in 0..65535
#:   path         a file name or program; "@app" is replaced by the app directory
#:   address      a non-empty transport address, eg. "host:port"
#:   int-list     comma-separated non-negative decimal integers
#:   assignments  comma-separated "<word>=<int>" items, eg. "smtp=2,forward=4"
KINDS: tuple[str, ...] = ("flag", "str", "int", "port", "path", "address", "int-list", "assignments")


@dataclass(frozen=True)
class Option:
    """One command-line option (also usable in a config file without the dashes)."""

    name: str  # long name without dashes, eg. "spool-dir"
    short: str | None  # the guide's one-letter form, eg. "s"
    metavar: str | None  # None for flags; else the value's name shown in help
    help: str  # one line, paraphrasing the guide
    section: str  # one of SECTIONS
    optional_value: bool = False  # value only with "=": --anonymous[=<scope>]
    short_is_off: bool = False  # the short letter (which takes no value) leaves it off, as upstream's -A
    repeatable: bool = False  # may be given more than once; values accumulate in a list
    joined: bool = False  # may be given more than once; values are joined with commas, as upstream's
    common: bool = False  # shown by plain --help (--help --verbose shows all)
    windows_only: bool = False  # an invalid option on unix, as in E-MailRelay 2.6b's unix build
    kind: str = "str"  # one of KINDS
    default: str | None = None  # the value used when the option is absent
    process: bool = False  # process-wide: not per configuration (see parse.py)
    choices: tuple[str, ...] = ()  # if non-empty, the only values allowed


def _flag(
    name: str,
    short: str | None,
    help: str,
    section: str,
    *,
    common: bool = False,
    process: bool = False,
    windows_only: bool = False,
) -> Option:
    """A row for an option without a value."""
    return Option(
        name,
        short,
        None,
        help,
        section,
        kind="flag",
        common=common,
        process=process,
        windows_only=windows_only,
    )


# One row per option, in the guide's order; kept unwrapped so it reads as a table.
# fmt: off
OPTIONS: tuple[Option, ...] = (
    # --- Basic ---
    Option("as-client", "q", "host:port", "forward spooled messages to the given server and then exit (--log --no-syslog --no-daemon --dont-serve --forward --forward-to)", "Basic", common=True, kind="address"),
    Option("as-proxy", "y", "host:port", "run as a store-and-forward proxy daemon (--log --close-stderr --forward-on-disconnect --forward-to)", "Basic", common=True, kind="address"),
    _flag("as-server", "d", "run as a storage daemon that accepts and spools messages (--log --close-stderr)", "Basic", common=True),
    Option("spool-dir", "s", "dir", "directory holding messages that have been received but not yet forwarded", "Basic", common=True, kind="path", default=OPTION_DEFAULTS["spool-dir"]),
    _flag("help", "h", "display help text and exit (use with --verbose for all options)", "Basic", common=True, process=True),
    _flag("version", "V", "display version information and exit", "Basic", common=True, process=True),
    # --- SMTP client ---
    Option("client-smtp-config", "c", "config", "SMTP client protocol features: pipelining, smtputf8strict, eightbitstrict, binarymimestrict", "SMTP client", joined=True),
    _flag("forward", "f", "forward spooled messages when the program starts", "SMTP client", common=True),
    _flag("forward-on-disconnect", "1", "forward spooled messages whenever an SMTP client disconnects", "SMTP client", common=True),
    Option("forward-to", "o", "host:port", "the remote SMTP server that spooled messages are forwarded to", "SMTP client", common=True, kind="address"),
    Option("poll", "O", "period", "forward spooled messages at regular intervals (in seconds)", "SMTP client", common=True, kind="int"),
    Option("client-filter", "Y", "program", "run a filter program (or net:, spam:, spam-edit:, exit:) whenever a message is forwarded", "SMTP client", repeatable=True, kind="path"),
    Option("client-interface", "6", "ip-address", "local address to bind for outgoing SMTP connections", "SMTP client", kind="address"),
    Option("connection-timeout", "U", "time", "timeout (in seconds) for connecting to remote SMTP servers", "SMTP client", kind="int", default=OPTION_DEFAULTS["connection-timeout"]),
    Option("idle-timeout", None, "time", "timeout (in seconds) for receiving traffic from remote SMTP and POP clients", "SMTP client", kind="int", default=OPTION_DEFAULTS["idle-timeout"]),
    Option("response-timeout", "T", "time", "timeout (in seconds) for responses from remote SMTP servers", "SMTP client", kind="int", default=OPTION_DEFAULTS["response-timeout"]),
    _flag("forward-to-all", None, "require every recipient to be accepted before forwarding (the default)", "SMTP client"),
    _flag("forward-to-some", None, "carry on forwarding even if some recipients are rejected", "SMTP client"),
    _flag("immediate", "m", "forward messages as they are received, before they are accepted", "SMTP client"),
    # --- SMTP server ---
    Option("port", "p", "port", "port number for incoming SMTP connections", "SMTP server", common=True, kind="port", default=OPTION_DEFAULTS["port"]),
    _flag("remote-clients", "r", "allow SMTP connections from addresses that are not local", "SMTP server", common=True),
    Option("address-verifier", None, "program", "run a program (or net:, account:) to verify each recipient address", "SMTP server", common=True, kind="path"),
    Option("verifier", None, "program", "the old user guide's name for --address-verifier", "SMTP server", kind="path"),
    Option("scanner", None, "host:port", "the old user guide's network scanner: the same as --filter net:<host:port>", "SMTP server", kind="address"),
    Option("anonymous", "A", "scope", "hide identity: vrfy, server, content and/or client (all if no scope; -A alone: none)", "SMTP server", optional_value=True, short_is_off=True),
    # The guide lists --delivery-dir with "(-s)", a copy-and-paste slip: -s is
    # --spool-dir. So --delivery-dir has no short letter here.
    Option("delivery-dir", "s", "dir", "base directory for mailboxes of local recipients (default: the spool directory)", "SMTP server", kind="path"),
    Option("dnsbl", None, "config", "DNSBL servers used to reject connections: servers, threshold, timeout (ms), DNS server", "SMTP server", joined=True),
    Option("domain", "D", "fqdn", "domain name used in EHLO, Received lines and authentication challenges", "SMTP server", common=True),
    Option("filter", "z", "program", "run a filter program (or net:, spam:, spam-edit:, exit:) whenever a message is stored", "SMTP server", common=True, repeatable=True, kind="path"),
    Option("filter-timeout", "W", "time", "timeout (in seconds) for running a --filter program", "SMTP server", kind="int", default=OPTION_DEFAULTS["filter-timeout"]),
    Option("interface", "I", "ip-address-list", "addresses or interface names to listen on, optionally prefixed smtp=, pop= or admin=", "SMTP server", common=True, repeatable=True),
    Option("prompt-timeout", "w", "time", "timeout (in seconds) for the initial prompt from a remote SMTP server", "SMTP server", kind="int", default=OPTION_DEFAULTS["prompt-timeout"]),
    Option("server-smtp-config", "Z", "config", "SMTP server protocol features: pipelining, chunking, smtputf8, smtputf8strict, nostrictparsing, noalabels", "SMTP server", joined=True),
    Option("size", "M", "bytes", "largest message size accepted over SMTP", "SMTP server", kind="int"),
    # --- POP server ---
    _flag("pop", "B", "enable the POP server", "POP server", common=True),
    _flag("pop-by-name", "J", "POP clients see the spool sub-directory named after their user-id", "POP server"),
    _flag("pop-no-delete", "G", "make the POP DELE command do nothing", "POP server"),
    Option("pop-port", "E", "port", "port number for the POP server", "POP server", kind="port", default=OPTION_DEFAULTS["pop-port"]),
    # --- Admin server ---
    Option("admin", "a", "port", "enable the administration interface on the given port", "Admin server", common=True, kind="port"),
    _flag("admin-terminate", "Q", "enable the terminate command of the administration interface", "Admin server"),
    # --- Authentication ---
    Option("client-auth", "C", "file", "secrets file (or plain:<b64-user>:<b64-password>) for authenticating with the remote server", "Authentication", common=True, kind="path"),
    Option("client-auth-config", None, "config", "SMTP client authentication mechanisms, eg. m:cram-md5,plain;x:login", "Authentication"),
    Option("server-auth", "S", "file", "secrets file (or pam:) for authenticating SMTP clients", "Authentication", common=True, kind="path"),
    Option("server-auth-config", None, "config", "SMTP server authentication mechanisms, eg. m:;a:plain", "Authentication"),
    Option("pop-auth", "F", "file", "secrets file (or pam:) holding POP accounts", "Authentication", common=True, kind="path"),
    # --- TLS ---
    _flag("client-tls", "j", "use STARTTLS on outgoing SMTP connections if the server supports it", "TLS", common=True),
    Option("client-tls-certificate", None, "pem-file", "client private key and certificate (or use twice: key file, then certificate file)", "TLS", repeatable=True, kind="path"),
    _flag("client-tls-connection", "b", "use SMTP over TLS (SMTPS) for outgoing connections", "TLS"),
    _flag("client-tls-required", None, "make TLS mandatory for outgoing SMTP connections", "TLS"),
    Option("client-tls-server-name", None, "hostname", "server name sent in the TLS handshake (SNI)", "TLS"),
    Option("client-tls-verify", None, "ca-list", "verify the remote server's certificate against these CAs (or <default>)", "TLS", kind="path"),
    Option("client-tls-verify-name", None, "cname", "verify the CNAME in the remote server's certificate", "TLS"),
    _flag("server-tls", "K", "offer STARTTLS (SMTP) and STLS (POP) to clients; needs --server-tls-certificate", "TLS", common=True),
    Option("server-tls-certificate", None, "pem-file", "server private key and certificate (or use twice: key file, then certificate file)", "TLS", common=True, repeatable=True, kind="path"),
    _flag("server-tls-connection", None, "accept SMTP over TLS (SMTPS) connections", "TLS"),
    _flag("server-tls-required", None, "make TLS mandatory for incoming SMTP and POP connections", "TLS"),
    Option("server-tls-verify", None, "ca-list", "verify clients' certificates against these CAs (or <default>)", "TLS", kind="path"),
    Option("tls-config", "9", "options", "low-level TLS library settings, eg. tlsv1.2 for a minimum protocol version", "TLS", joined=True),
    # --- Process ---
    _flag("dont-serve", "x", "disable all network serving; exit when initial forwarding is done", "Process"),
    Option("localedir", None, "dir", "base directory of message catalogues (enables localisation)", "Process", kind="path", process=True),
    _flag("no-daemon", "t", "run in the foreground, without forking or detaching", "Process", common=True, process=True),
    _flag("hidden", "H", "hide the application window (Windows only: an invalid option here)", "Process", windows_only=True, process=True),
    _flag("no-smtp", "X", "do not listen for incoming SMTP connections", "Process"),
    Option("pid-file", "i", "path", "write the process id into this file once the daemon is running", "Process", common=True, kind="path", process=True),
    Option("user", "u", "username", "non-privileged user to run as when idle and for filters (root: no switching)", "Process", common=True, default=OPTION_DEFAULTS["user"], process=True),
    Option("show", None, "style", "application window style (Windows only: an invalid option here)", "Process", windows_only=True, process=True),
    # --- Logging ---
    _flag("verbose", "v", "more verbose logging with --log, more help with --help", "Logging", common=True, process=True),
    _flag("log", "l", "log to the standard error stream and the system log", "Logging", common=True, process=True),
    _flag("debug", "g", "debug-level logging (may expose passwords and message content)", "Logging", process=True),
    _flag("log-address", None, "add remote clients' network addresses to log lines (--log-format=address)", "Logging", process=True),
    Option("log-file", "N", "file", "log to this file instead of standard error (%d is replaced by YYYYMMDD)", "Logging", common=True, kind="path", process=True),
    Option("log-format", None, "format", "add fields to log lines: time, unit, address (or network), port, msgid; json: JSON lines", "Logging", process=True, joined=True),
    _flag("log-time", "L", "add a timestamp to log lines (--log-format=time)", "Logging", process=True),
    _flag("no-syslog", "n", "do not log to the system log", "Logging", common=True, process=True),
    Option("syslog", "k", "facility", "log to the system log even with --no-syslog", "Logging", optional_value=True, process=True),
    _flag("close-stderr", "e", "close the standard error stream soon after start-up", "Logging", common=True, process=True),
    # --- Supervisor (our extensions) ---
    Option("workers", None, "role=n,...", "number of processes per role, eg. smtp=2,forward=4", "Supervisor", kind="assignments", process=True),
    Option("run-dir", None, "dir", "directory for the supervisor's pid and ipc files", "Supervisor", kind="path", process=True),
    Option("retry", None, "schedule", "turn on back-off: temporary forwarding failures (4xx, connection and session errors) are retried after these delays in seconds, eg. 60,300,900,3600,14400; without it every failure is final at once, as upstream's", "Supervisor", kind="int-list"),
    Option("give-up", None, "seconds", "with --retry: age after which a message that keeps failing is marked as failed (default 432000)", "Supervisor", kind="int"),
    Option("max-connections", None, "count", "maximum number of simultaneous SMTP server connections", "Supervisor", kind="int"),
    Option("metrics", None, "host:port", "serve Prometheus /metrics and /healthz on this address (supervised mode)", "Supervisor", kind="address"),
    Option("single-process", None, None, "run every role in one process, without the circus supervisor", "Supervisor", kind="flag", process=True),
    Option("print-circus-ini", None, None, "print the circus.ini with which circusd runs the relay these options describe, and exit", "Supervisor", kind="flag", process=True),
    Option("notify", None, "method", "how new spool files are noticed: inotify or poll", "Supervisor", default=OPTION_DEFAULTS["notify"], choices=("inotify", "poll")),
)
# fmt: on

#: Options by long name and by short letter. E-MailRelay 2.6b's --help gives ``-s`` to both
#: --spool-dir and --delivery-dir and takes ``-s`` as --delivery-dir (observed, issue 17): the
#: later row wins here, so ``-s`` is --delivery-dir (--spool-dir's row keeps it for --help).
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
BY_SHORT: dict[str, Option] = {o.short: o for o in OPTIONS if o.short}
