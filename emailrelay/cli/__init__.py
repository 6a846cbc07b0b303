"""emailrelay.cli package."""
