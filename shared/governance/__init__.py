"""Governance helpers shared by services: PII detection and redaction."""
