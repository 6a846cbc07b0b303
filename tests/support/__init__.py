"""Test support: starting real relay processes, free ports, spool inspection."""
