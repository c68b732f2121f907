import sys

from txflip._cli import main

sys.exit(main())
