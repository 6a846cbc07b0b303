#!/usr/bin/python3
"""Test address verifier in Python: local for the --domain, remote (lower-cased) otherwise."""

import sys

rcpt, _from, _peer, domain = sys.argv[1:5]
local, _, rdomain = rcpt.rpartition("@")
if rdomain.lower() == domain.lower():
    print(f"User {local}")
    print(local.lower())
    sys.exit(0)
print("")
print(rcpt.lower())
sys.exit(1)
