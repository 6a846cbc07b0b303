"""Compatibility audit tests (issue 12): each proves a row of docs/compatibility.md."""
