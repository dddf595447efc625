"""Governance helpers shared by services: PII detection and redaction (pii), data boundaries
of goal types and redaction of what leaves for models and web-facing tools (boundaries)."""
