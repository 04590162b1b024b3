"""``python -m compress`` is the same as ``python -m compress.run``."""
import sys

from .run import main

sys.exit(main())
