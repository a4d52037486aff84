"""``python -m deepercluster`` (and ``torchrun -m deepercluster``) run the command line."""

import sys

from deepercluster.cli import main

sys.exit(main())
