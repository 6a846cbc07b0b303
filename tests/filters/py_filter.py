#!/usr/bin/python3
"""Test filter in Python: adds an X-Python-Filter header and sets ClientAccountSelector.

Rewrites both files in place (same inode), as a client filter should.
"""

import sys

content, envelope = sys.argv[1], sys.argv[2]
with open(content, "rb") as f:
    data = f.read()
with open(content, "r+b") as f:
    f.write(b"X-Python-Filter: yes\r\n" + data)
with open(envelope, "rb") as f:
    lines = f.read().split(b"\r\n")
lines = [
    b"X-MailRelay-ClientAccountSelector: py"
    if line.startswith(b"X-MailRelay-ClientAccountSelector:")
    else line
    for line in lines
]
with open(envelope, "r+b") as f:
    out = b"\r\n".join(lines)
    f.write(out)
    f.truncate(len(out))
sys.exit(0)
