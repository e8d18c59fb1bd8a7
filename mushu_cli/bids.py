"""Write a recording into a BIDS dataset with mne-bids (``mushu convert --to bids``).

The recording's BrainVision set (``NAME.vhdr/.vmrk/.eeg``) is what MNE
reads; mne-bids copies it into the dataset under
``sub-<subject>[/ses-<session>]/eeg/`` with the sidecars BIDS asks for
(``*_eeg.json``, ``*_channels.tsv``, ``*_events.tsv``, ``dataset_description.json``,
``participants.tsv``). The markers become ``events.tsv`` rows (trial type
``Stimulus/<label>``, as MNE names them, tabs and control characters
written as text: :func:`tsv_label`); lost samples (gaps) a
``BAD_mushu_gap`` row spanning them, so MNE leaves them out of epochs.
Channels whose unit MNE does not read as a voltage (a simulated amp's
``a.u.``) are declared EEG all the same, their values unscaled.
"""

from __future__ import annotations

import os
import re

import numpy as np

from mushu_core.recordings import Recording, plain_label

from .writing import GAP_ANNOTATION

#: BIDS labels are alphanumeric.
_LABEL = re.compile(r"[^A-Za-z0-9]")


def tsv_label(description: str) -> str:
    r"""An annotation's text as a value of ``events.tsv``: control characters as for EDF+
    (:func:`~mushu_core.recordings.plain_label`), and tabs, which would split the row, as ``\x09``."""
    return plain_label(description).replace("\t", "\\x09")


def default_task(base: str) -> str:
    """A BIDS task label from a recording's name: its letters and digits (``rest-2`` -> ``rest2``)."""
    return _LABEL.sub("", os.path.basename(base)) or "mushu"


def write_bids(rec: Recording, base: str, root: str, subject: str = "01", session: str | None = None,
               task: str | None = None, run: int | None = None, line_freq: float | None = None) -> str:
    """Write recording ``base`` (``rec`` as :func:`~mushu_core.recordings.load` returns it) into BIDS ``root``.

    Returns the path of the EEG file written. Raises ``ValueError`` for a label
    BIDS does not allow and ``FileExistsError`` if the dataset holds this
    recording's file already (nothing is overwritten).
    """
    import mne
    from mne_bids import BIDSPath, write_raw_bids


    path = BIDSPath(subject=subject, session=session, task=task or default_task(base), run=run,
                    datatype="eeg", root=root, suffix="eeg", extension=".vhdr")
    if os.path.exists(path.fpath):
        raise FileExistsError(f"{path.fpath} exists already; choose another subject, session, task or run")
    raw = mne.io.read_raw_brainvision(base + ".vhdr", verbose="error")
    raw.info["line_freq"] = line_freq
    if "eeg" not in raw.get_channel_types():  # units MNE does not read as volts (a simulated amp's a.u.)
        raw.set_channel_types(dict.fromkeys(raw.ch_names, "eeg"), on_unit_change="ignore", verbose="error")
    for g in rec.gaps:
        raw.annotations.append(g["sample"] / rec.fs, g["count"] / rec.fs, GAP_ANNOTATION)
    raw.annotations.description = np.array([tsv_label(d) for d in raw.annotations.description], dtype=object)
    write_raw_bids(raw, path, overwrite=False, verbose="error")  # a BrainVision set: copied as it is
    return str(path.fpath)
