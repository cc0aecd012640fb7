"""``python -m dgmlab ...`` (and ``torchrun ... -m dgmlab train ...``): the ``dgmlab`` command line."""

import sys

from dgmlab.cli import main

sys.exit(main())
