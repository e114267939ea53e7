import sys

from bn.cli import main

sys.exit(main())
