"""Tests of L{txflip.check}."""
