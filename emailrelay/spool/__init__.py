"""emailrelay.spool package."""
