import sys

from .cli import main

sys.exit(1 if main()["errors"] else 0)
