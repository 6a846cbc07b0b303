"""Differential tests: the same scenario against our relay and E-MailRelay 2.6b (tests/support/oracle.py)."""
