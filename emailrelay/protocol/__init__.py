"""emailrelay.protocol package."""
