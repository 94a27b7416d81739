"""The dataset layout of a container: the name of every array lsdflow reads or writes, in
one place (CREMI's `volumes/...` layout; offsets and voxel sizes in nm on every array)."""

from __future__ import annotations

RAW = "volumes/raw"
NEURON_IDS = "volumes/labels/neuron_ids"
LABELS_MASK = "volumes/labels/labels_mask"
MITO_IDS = "volumes/labels/mito_ids"
PRED_AFFS = "volumes/pred_affs"
PRED_LSDS = "volumes/pred_lsds"
FRAGMENTS = "volumes/fragments"  # 0 on boundary voxels: the region graph's nodes
FILLED_FRAGMENTS = "volumes/fragments_filled"  # the same, boundary voxels filled: what relabel maps
SEGMENTATIONS = "volumes/segmentation"  # volumes/segmentation/<merge function>/<threshold>
LUTS = "luts"  # luts/<merge function>/<threshold>.npz: fragment -> segment
# the attribute of the affinities recording which segmentation the label-free criterion chose
CHOICE_ATTRIBUTE = "threshold_choice"


def prediction_dataset(output: str) -> str:
    """The dataset of a model output (`affs` -> volumes/pred_affs)."""
    return f"volumes/pred_{output}"


def segmentation_dataset(merge_function: str, threshold: float) -> str:
    return f"{SEGMENTATIONS}/{merge_function}/{float(threshold):g}"
