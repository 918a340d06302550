"""`python -m host --config node.json`: run one node's host process."""

import sys

from host.main import main

sys.exit(main())
