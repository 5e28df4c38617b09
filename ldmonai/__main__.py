import sys

from ldmonai.cli import main

sys.exit(main())
