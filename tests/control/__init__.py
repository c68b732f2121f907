"""Tests of L{txflip.control}."""
