"""`python -m charter.host --config node.json`: run one node's host process."""

import sys

from charter.host.main import main

sys.exit(main())
