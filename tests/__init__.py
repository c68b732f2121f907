"""
The test suite: one folder per subpackage of L{txflip}; the tests of the top-level
modules, the real-supervisor tests and the hygiene checks here; shared helpers in
L{harness}, L{talkers} and L{conftest}; the programs the tests start (C{flipapp},
C{webapp}, ...) are run as scripts.
"""
