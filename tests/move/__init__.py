"""Tests of L{txflip.move}."""
