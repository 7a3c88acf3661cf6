"""`python -m mesh` is `lifeops-mesh`."""

import sys

from mesh.cli import main

sys.exit(main())
