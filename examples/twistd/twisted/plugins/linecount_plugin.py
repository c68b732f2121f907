# A twistd plugin of your own: three lines pointing at its module.  This file is
# found by twistd when examples/twistd is on sys.path (PYTHONPATH); there is no
# __init__.py in twisted/ or twisted/plugins/ here, on purpose (Twisted's rule
# for plugins outside Twisted).
from twisted.application.service import ServiceMaker

linecount = ServiceMaker(
    "linecount", "linecount.server", "Counts lines, upgradable", "linecount"
)
