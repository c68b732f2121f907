"""Tests of L{txflip.protocols}."""
