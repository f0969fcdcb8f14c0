#!/usr/bin/env python3
"""Thin wrapper: `python launch/tpu_vm.py --help` (the code is pplx_jax/cli/launch.py; docs in launch/README.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, no install

from pplx_jax.cli.launch import main_tpu_vm  # noqa: E402

if __name__ == "__main__":
  sys.exit(main_tpu_vm(sys.argv[1:]))
