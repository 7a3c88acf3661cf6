"""`python -m lifeops_mesh` is `lifeops-mesh`."""

import sys

from lifeops_mesh.cli import main

sys.exit(main())
