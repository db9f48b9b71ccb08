import sys

from chatft_local.cli import main

sys.exit(main())
