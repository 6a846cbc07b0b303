"""emailrelay.policy: filters and address verifiers (exe, net:, built-ins); verdicts as plain data."""
