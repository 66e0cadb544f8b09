"""Tamper evidence: canonical JSON, the Merkle log, signed checkpoints, the offline verifier."""

LOG_FILE = "log"  # in the audit directory; here so the CLI names it without loading crypto
