import sys

from pplx_jax.cli.app import main

sys.exit(main())
