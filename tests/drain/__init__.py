"""Tests of L{txflip.drain}."""
