"""``mushu convert NAME --to edf|bdf|fif|xdf|bids [-o OUT]``: a recording in another file format."""

from __future__ import annotations

import sys

NAME = "convert"
HELP = "convert a recording to EDF+, BDF+, FIF, XDF or BIDS (needs the 'files' extra: pip install 'mushu[files]')"


def add_arguments(p):
    p.add_argument("name", help="the recording: NAME or one of its files (NAME.meta, NAME.eeg, ...)")
    p.add_argument("--to", required=True, choices=["edf", "bdf", "fif", "xdf", "bids"], dest="fmt",
                   help="edf: 16 bit, bdf: 24 bit (both with markers as EDF+ annotations); fif: MNE-Python's, "
                        "float32 as recorded; xdf: LSL's, every sample with its acquisition time and a marker "
                        "stream, and every further stream recorded with it (NAME-STREAM); bids: the BrainVision "
                        "set with events.tsv and sidecars, into a BIDS dataset")
    p.add_argument("-o", "--output", help="output file (default NAME.edf, NAME.bdf, NAME_raw.fif or NAME.xdf; "
                                          "never overwritten); for bids the dataset's root (default NAME_bids)")
    bids = p.add_argument_group("bids", "where the recording goes in the dataset (BIDS labels: letters and digits)")
    bids.add_argument("--subject", default="01", help="participant label (default 01)")
    bids.add_argument("--session", help="session label (default none)")
    bids.add_argument("--task", help="task label (default the recording's name, letters and digits only)")
    bids.add_argument("--run", type=int, dest="bids_run", help="run number (default none)")
    bids.add_argument("--line-freq", type=float, help="power line frequency in Hz, 50 or 60 (default n/a)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        from mushu_cli.conversion import convert
        extra = dict(subject=args.subject, session=args.session, task=args.task, run=args.bids_run,
                     line_freq=args.line_freq) if args.fmt == "bids" else {}
        out = convert(args.name, args.fmt, args.output, progress=not args.quiet, **extra)
    except ImportError as exc:
        print(f"mushu convert: {exc.name or exc} is not installed; pip install 'mushu[files]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"mushu convert: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
