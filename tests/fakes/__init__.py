"""Fakes of external systems that tests start on loopback."""
