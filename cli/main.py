"""The `lsdflow` command line: the parser of every command group, and how errors end."""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from ..core.blockwise.runner import BlockwiseError
from ..core.config import ConfigError
from ..core.io.graphstore import GraphStoreError
from ..core.io.input_checks import ModelFileError
from ..core.io.volumes import VolumeError
from ..registry.tracking import RegistryError
from . import data_commands, model_commands, platform_commands, volume_commands

COMMAND_GROUPS = (data_commands, volume_commands, model_commands, platform_commands)
# bad input and refused requests: a message, exit status 2, never a traceback or a retry
USER_ERRORS = (ConfigError, VolumeError, ModelFileError, FileNotFoundError, GraphStoreError, BlockwiseError,
               RegistryError)
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsdflow", description="Neuron segmentation of EM volumes with Local Shape Descriptors"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"lsdflow: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            raise
        # a full disk, a quota, a read-only mount: every write goes beside its output and
        # is renamed in only when complete, so what was there before is intact
        print(f"lsdflow: error: {e.filename or ''}: {e.strerror}; nothing written before was changed",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
