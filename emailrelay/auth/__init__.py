"""emailrelay.auth package."""
