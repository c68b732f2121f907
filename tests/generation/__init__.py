"""Tests of L{txflip.generation}."""
