"""emailrelay.services package."""
