"""`python -m image` runs the `kmsnode-image` command."""

from __future__ import annotations

import sys

from image.cli import main

sys.exit(main())
