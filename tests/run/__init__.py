"""Tests of L{txflip.run}."""
