"""``mushu convert NAME --to edf|bdf|fif [-o OUT]``: a recording in another file format."""

from __future__ import annotations

import sys

NAME = "convert"
HELP = "convert a recording to EDF+, BDF+ or FIF (needs the 'files' extra: pip install 'mushu[files]')"


def add_arguments(p):
    p.add_argument("name", help="the recording: NAME or one of its files (NAME.meta, NAME.eeg, ...)")
    p.add_argument("--to", required=True, choices=["edf", "bdf", "fif"], dest="fmt",
                   help="edf: 16 bit, bdf: 24 bit (both with markers as EDF+ annotations); fif: MNE-Python's, "
                        "float32 as recorded")
    p.add_argument("-o", "--output", help="output file (default NAME.edf, NAME.bdf or NAME_raw.fif); "
                                          "never overwritten")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        from mushu_cli.conversion import convert
        out = convert(args.name, args.fmt, args.output, progress=not args.quiet)
    except ImportError as exc:
        print(f"mushu convert: {exc.name or exc} is not installed; pip install 'mushu[files]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"mushu convert: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
