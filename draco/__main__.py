import sys

from draco.cli import main

sys.exit(main())
