"""Tests of L{txflip.listen}."""
