"""The upstream guides, as data quoted in the repository and, optionally, as their text.

What it is for: tests that check our option table, docs/compatibility.md and
the guides' examples. The facts they need from the E-MailRelay guides are
quoted here as data (the reference guide's option lines, every example
command line of the three guides), so those checks run on any clone. The
guides' text itself is not ours to copy: a test that compares the quoted
data (or printed scripts) with the text calls :func:`guide_text`, which
reads the guide from the folder named by ``$EMAILRELAY_GUIDES`` and skips,
naming that variable, when it is unset.

Guarantees: nothing here reads a file outside the repository unless
``EMAILRELAY_GUIDES`` names it; a variable that is set but names a folder
without the guide fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

VARIABLE = "EMAILRELAY_GUIDES"
REFERENCE = "reference-2.6.md"
USERGUIDE = "userguide-2.6.md"
SEED = "000_f2e06d030cad569a.txt"

# A line of an indented example that runs emailrelay or emailrelay-submit ("$ " and "exec " dropped).
EXAMPLE = re.compile(r"^(?: {8}|\t)(?:\$ )?(?:exec )?((?:/usr/[\w/]*/)?emailrelay(?:-submit)?(?: .*)?)$")
OPTION_LINE_START = "*   \\-\\-"


def guide_path(name: str) -> Path:
    """The guide ``name`` in ``$EMAILRELAY_GUIDES``; skips the test when the variable is unset."""
    folder = os.environ.get(VARIABLE)
    if not folder:
        pytest.skip(f"{VARIABLE} is not set (the folder of the upstream guides, for {name})")
    path = Path(folder) / name
    if not path.is_file():
        pytest.fail(f"{VARIABLE}={folder} has no {name}")
    return path


def guide_text(name: str) -> str:
    return guide_path(name).read_text(encoding="utf-8")


def option_lines(text: str) -> list[str]:
    """The option lines of the reference guide (``*   \\-\\-name ...``), in order."""
    return [line for line in text.splitlines() if line.startswith(OPTION_LINE_START)]


def example_commands(text: str) -> list[str]:
    """Every example command line of a guide, in order."""
    return [m.group(1).strip() for line in text.splitlines() if (m := EXAMPLE.match(line))]


# The reference guide's option list, verbatim (markdown escapes included).
REFERENCE_OPTION_LINES: tuple[str, ...] = tuple(
    r"""
*   \-\-as-client &lt;host:port&gt; (-q)
*   \-\-as-proxy &lt;host:port&gt; (-y)
*   \-\-as-server (-d)
*   \-\-spool-dir &lt;dir&gt; (-s)
*   \-\-help (-h)
*   \-\-version (-V)
*   \-\-client-smtp-config &lt;config&gt; (-c)
*   \-\-forward (-f)
*   \-\-forward-on-disconnect (-1)
*   \-\-forward-to &lt;host:port&gt; (-o)
*   \-\-poll &lt;period&gt; (-O)
*   \-\-client-filter &lt;program&gt; (-Y)
*   \-\-client-interface &lt;ip-address&gt; (-6)
*   \-\-connection-timeout &lt;time&gt; (-U)
*   \-\-idle-timeout &lt;time&gt;
*   \-\-response-timeout &lt;time&gt; (-T)
*   \-\-forward-to-all
*   \-\-forward-to-some
*   \-\-immediate (-m)
*   \-\-port &lt;port&gt; (-p)
*   \-\-remote-clients (-r)
*   \-\-address-verifier &lt;program&gt;
*   \-\-anonymous[=&lt;scope&gt;] (-A)
*   \-\-delivery-dir &lt;dir&gt; (-s)
*   \-\-dnsbl &lt;config&gt;
*   \-\-domain &lt;fqdn&gt; (-D)
*   \-\-filter &lt;program&gt; (-z)
*   \-\-filter-timeout &lt;time&gt; (-W)
*   \-\-interface &lt;ip-address-list&gt; (-I)
*   \-\-prompt-timeout &lt;time&gt; (-w)
*   \-\-server-smtp-config &lt;config&gt; (-Z)
*   \-\-size &lt;bytes&gt; (-M)
*   \-\-pop (-B)
*   \-\-pop-by-name (-J)
*   \-\-pop-no-delete (-G)
*   \-\-pop-port &lt;port&gt; (-E)
*   \-\-admin &lt;port&gt; (-a)
*   \-\-admin-terminate (-Q)
*   \-\-client-auth &lt;file&gt; (-C)
*   \-\-client-auth-config &lt;config&gt;
*   \-\-server-auth &lt;file&gt; (-S)
*   \-\-server-auth-config &lt;config&gt;
*   \-\-pop-auth &lt;file&gt; (-F)
*   \-\-client-tls (-j)
*   \-\-client-tls-certificate &lt;pem-file&gt;
*   \-\-client-tls-connection (-b)
*   \-\-client-tls-required
*   \-\-client-tls-server-name &lt;hostname&gt;
*   \-\-client-tls-verify &lt;ca-list&gt;
*   \-\-client-tls-verify-name &lt;cname&gt;
*   \-\-server-tls (-K)
*   \-\-server-tls-certificate &lt;pem-file&gt;
*   \-\-server-tls-connection
*   \-\-server-tls-required
*   \-\-server-tls-verify &lt;ca-list&gt;
*   \-\-tls-config &lt;options&gt; (-9)
*   \-\-dont-serve (-x)
*   \-\-localedir &lt;dir&gt;
*   \-\-no-daemon (-t)
*   \-\-hidden (-H)
*   \-\-no-smtp (-X)
*   \-\-pid-file &lt;path&gt; (-i)
*   \-\-user &lt;username&gt; (-u)
*   \-\-show &lt;style&gt;
*   \-\-verbose (-v)
*   \-\-log (-l)
*   \-\-debug (-g)
*   \-\-log-address
*   \-\-log-file &lt;file&gt; (-N)
*   \-\-log-format
*   \-\-log-time (-L)
*   \-\-no-syslog (-n)
*   \-\-syslog[=&lt;facility&gt;] (-k)
*   \-\-close-stderr (-e)
""".strip().splitlines()
)

# Every example command line of each guide, verbatim and in order (as example_commands() finds them).
EXAMPLE_COMMANDS: dict[str, tuple[str, ...]] = {
    REFERENCE: (
        "emailrelay [<option> [<option> ...]] [<config-file>]",
        "emailrelay --as-proxy=127.0.0.1:25 --port=587 --filter=@app/myfilter --spool-dir=@app/spool",
        "emailrelay --as-server --server-auth=/etc/emailrelay-client.auth",
        "emailrelay --as-client=example.com:smtp --client-auth=/etc/emailrelay-server.auth",
        'emailrelay-submit -dtFN --to="user@localhost" --content U3ViamVjdDogaGVscA --content="" --content=ZXJyb3I',
        'emailrelay-submit --to="user@localhost" --from="sender@localhost" --input-file=content.txt',
        'emailrelay-submit -dtF --to="user@localhost" --content=U3ViamVjdDogaGVscA --content="" --body'
        " --input-file=body.txt",
        "emailrelay-submit --bcc-split --input-file message.eml",
        "emailrelay --forward-to example.com:smtp@localhost:9050 ...",
        "emailrelay --as-server --port=125 --forward-to=localhost:25 --admin=10026",
        "emailrelay -r --dnsbl spam.example.com,block.example.com,1,500,1.1.1.1:53 ...",
        "emailrelay -r --dnsbl spam.example.com,block.example.com ...",
        "emailrelay -r --dnsbl 1.1.1.1:53,500,1,spam.example.com,block.example.com",
        "emailrelay --log -v -r --dnsbl spam.example.com,block.example.com,0 ...",
        "emailrelay -r --dnsbl spam.example.com,block.example.com,1,-5000 ...",
    ),
    USERGUIDE: (
        "emailrelay --as-server --port 10025 --spool-dir /tmp",
        "emailrelay --log --no-daemon --port 10025 --spool-dir /tmp",
        "emailrelay --as-client smtp.example.com:25 --spool-dir /tmp",
        "emailrelay --as-server --poll 60 --forward-to smtp.example.com:25",
        "emailrelay --as-server --forward-on-disconnect --forward-to smtp.example.com:25",
        "emailrelay --as-server --filter /tmp/set-from.js",
        "emailrelay --as-server -v -r --domain=example.com --address-verifier=account:",
        "emailrelay ... --pop --pop-port 10110 --pop-auth /etc/emailrelay.auth",
        "emailrelay --help --verbose",
        "emailrelay --as-server --remote-clients --address-verifier=account: --domain=mydomain.com",
        "emailrelay --as-server --remote-clients --server-auth=/etc/emailrelay.auth",
        "emailrelay --as-server --pop --pop-auth=/etc/pop.auth",
        "/usr/sbin/emailrelay --as-client=smtp.example.com:smtp",
        "emailrelay --as-server --filter=spam-edit:127.0.0.1:783",
        "emailrelay --as-server --filter=spam:127.0.0.1:783",
        "emailrelay --port 587 --as-proxy=smtp.example.com:25@localhost:9050 --domain=anon.net --anonymous"
        " --connection-timeout=300",
        "emailrelay -r --dnsbl=zen.spamhaus.org,bl.mailspike.net ...",
        "emailrelay",
    ),
    SEED: (
        "emailrelay --as-proxy smarthost:smtp --filter $HOME/bin/addsig --spool-dir $HOME/tmp",
        "emailrelay --as-server --port 10025 --spool-dir $HOME/tmp",
        "emailrelay --as-client smarthost:smtp --spool-dir $HOME/tmp",
        "emailrelay --pop --no-smtp --log --close-stderr",
        "emailrelay --help --verbose",
        "emailrelay --as-client <myisp>:smtp",
        "/usr/local/sbin/emailrelay --as-client <myisp>:smtp",
        "emailrelay --as-server --pop --pop-auth /etc/emailrelay.auth",
        'emailrelay --as-server --filter "c:/winnt/system32/cscript.exe //nologo'
        ' c:/program\\ files/emailrelay/emailrelay-runperl.js"',
        "emailrelay --as-server --filter /usr/local/bin/myfilter.sh",
        "emailrelay --as-client smarthost:smtp",
        "emailrelay --as-server",
        "emailrelay --as-client smarthost:smtp --client-filter /usr/local/bin/myfilter.sh",
        "emailrelay --log --close-stderr --no-smtp --poll 30 --forward-to smarthost:smtp ...",
    ),
}
