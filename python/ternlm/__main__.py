"""python -m ternlm ... is the `ternlm` command."""
import sys

from .cli import main

sys.exit(main())
