"""emailrelay.bus package."""
