"""``mushu plot NAME -o FILE.png``: a recording's channels, markers and gaps as a picture."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from mushu_core.recordings import GAP_LABEL, base_name, load, plain_label

NAME = "plot"
HELP = "plot a recording to a PNG: channels stacked over time, markers, gaps (needs the 'files' extra)"
#: Above this many samples per channel, each channel is drawn as its min/max envelope.
MAX_POINTS = 4000
#: Marker labels written on the plot at most (lines are drawn for all).
MAX_LABELS = 60


def add_arguments(p):
    p.add_argument("name", help="the recording: NAME or one of its files")
    p.add_argument("-o", "--output", required=True, help="the picture to write (PNG; overwritten)")
    p.add_argument("--start", type=float, default=0.0, help="first second to show (default 0)")
    p.add_argument("--duration", type=float, help="seconds to show (default: to the end)")
    p.add_argument("--channels", nargs="+", metavar="CH", help="channel names (or 0-based numbers) to show")


def run(args) -> int:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("mushu plot: matplotlib is not installed; pip install 'mushu[files]'", file=sys.stderr)
        return 2
    try:
        rec = load(args.name, mmap=True)
        picks = pick_channels(rec.channels, args.channels)
        first, stop = sample_range(rec, args.start, args.duration)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mushu plot: {exc}", file=sys.stderr)
        return 1
    fig = draw(plt, rec, picks, first, stop, title=os.path.basename(base_name(args.name)))
    fig.savefig(args.output, dpi=100)
    plt.close(fig)
    print(args.output)
    return 0


def pick_channels(channels: list, wanted: list | None) -> list:
    """Indices of ``wanted`` (names, else 0-based numbers); all when None."""
    if not wanted:
        return list(range(len(channels)))
    picks = []
    for w in wanted:
        if w in channels:
            picks.append(channels.index(w))
        elif w.isdigit() and int(w) < len(channels):
            picks.append(int(w))
        else:
            raise ValueError(f"no channel {w!r}; the recording has {', '.join(channels)}")
    return picks


def sample_range(rec, start: float, duration: float | None) -> tuple[int, int]:
    """``[first, stop)`` samples of the window ``start`` s on, ``duration`` s long."""
    n = len(rec.data)
    first = round(start * rec.fs)
    stop = n if duration is None else min(n, first + round(duration * rec.fs))
    if start < 0 or (duration is not None and duration <= 0) or first >= n:
        raise ValueError(f"nothing to plot from {start} s for {duration} s: the recording has "
                         f"{n / rec.fs:g} s ({n} samples)")
    return first, stop


def envelope(data, first: int, stop: int, picks: list) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and values (n, len(picks)); long spans as per-bucket min/max pairs."""
    n = stop - first
    bucket = max(1, -(-n // MAX_POINTS))
    if bucket == 1:
        return np.arange(first, stop), np.asarray(data[first:stop][:, picks], np.float64)
    xs, ys = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets (gaps) stay NaN
        for a in range(first, stop, bucket * 256):  # a few MB at a time
            b = min(stop, a + bucket * 256)
            chunk = np.asarray(data[a:b][:, picks], np.float64)
            for i in range(0, len(chunk), bucket):
                part = chunk[i:i + bucket]
                xs += [a + i, a + i + len(part) // 2]
                ys += [np.nanmin(part, axis=0), np.nanmax(part, axis=0)]
    return np.array(xs), np.array(ys)


def draw(plt, rec, picks: list, first: int, stop: int, title: str):
    """The figure: stacked channels, marker lines with labels, shaded gaps."""
    fs = rec.fs
    x, y = envelope(rec.data, first, stop, picks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = y - np.nanmedian(y, axis=0)
        spread = np.nanmax(np.nanmax(y, axis=0) - np.nanmin(y, axis=0)) if len(y) else 0.0
    step = spread * 1.1 if np.isfinite(spread) and spread > 0 else 1.0
    offsets = -step * np.arange(len(picks))
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.5 + 0.45 * len(picks))))
    ax.plot(x / fs, y + offsets, linewidth=0.7)
    ax.set_yticks(offsets, [rec.channels[c] for c in picks])
    ax.set_xlim(first / fs, max(stop - 1, first + 1) / fs)
    ax.set_xlabel("time (s)")
    units = rec.meta.get("mushu", {}).get("units") or ["?"]
    ax.set_title(f"{title}: {rec.meta.get('Amp', '')}, {fs:g} Hz; channels {step:.4g} {units[0]} apart", fontsize=10)
    top = ax.get_ylim()[1]
    for g in rec.gaps:
        a, b = g["sample"] / fs, (g["sample"] + g["count"]) / fs
        if b >= first / fs and a <= stop / fs:
            ax.axvspan(a, b, facecolor="0.8", edgecolor="0.6", linewidth=1, zorder=0,
                       label="lost samples" if g is rec.gaps[0] else None)
    shown = [(s, label) for s, label in rec.marker_samples() if first <= s < stop and not label.startswith(GAP_LABEL)]
    for i, (s, label) in enumerate(shown):
        ax.axvline(s / fs, color="tab:red", linewidth=0.8, alpha=0.7)
        if i < MAX_LABELS:
            text = " " + plain_label(label).replace("\t", "\\t")
            ax.text(s / fs, top, text, rotation=90, va="top", ha="right", fontsize=7, color="tab:red")
    if rec.gaps:
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
