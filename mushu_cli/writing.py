"""What every file writer of ``mushu convert`` shares: chunked reading, the progress bar, the gap annotation."""

from __future__ import annotations

#: Samples are read and converted in chunks of about this many bytes.
CHUNK_BYTES = 8 << 20
#: The annotation (EDF+, FIF, BIDS) of samples a recording lost.
GAP_ANNOTATION = "BAD_mushu_gap"


def progress_bar(total: int, desc: str, progress: bool):
    """A tqdm bar of ``total`` samples (shown after a second, and only if ``progress``)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=" samples", unit_scale=True, delay=1.0, disable=not progress)


def chunks(n: int, n_channels: int):
    """``(start, stop)`` of runs of ``n`` samples of ``n_channels`` float32 of about :data:`CHUNK_BYTES` each."""
    step = max(1, CHUNK_BYTES // (4 * max(1, n_channels)))
    for start in range(0, n, step):
        yield start, min(n, start + step)
