"""What differs between two acquisitions, measured where it matters to the network.

For each dataset config (default gala and medulla), on its labelled volume: raw intensity
(range, and z-scored as the network sees it), membrane contrast (z-scored intensity on
label boundaries vs inside objects, and their separability d'), dark structures inside
objects (mitochondria, vesicle clouds: interior voxels darker than the median membrane),
the size of neuron profiles in a section (equivalent diameter, nm) against the network's
field of view, and how confident a model is there (affinity uncertainty). Prints a table,
writes JSON and a picture: the same 1.2 µm field of both acquisitions, raw, labels and
the model's mean affinity, and the z-scored intensity histograms of boundary and inside.

    python benchmarks/acquisition_shift.py [--config gala --config medulla] [--model FILE]
        [--out FILE] [--picture FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from lsdflow.core.config import load_config  # noqa: E402
from lsdflow.core.io.intensity import Normalization, intensity_stats  # noqa: E402
from lsdflow.core.io.volumes import open_array  # noqa: E402
from lsdflow.core.model.checkpoints import load_model  # noqa: E402
from lsdflow.core.predict.tiling import predict_array  # noqa: E402
from lsdflow.core.segment.threshold_selection import affinity_uncertainty  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELD_NM = 1200  # the side of the field shown of each acquisition


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels that are background or touch another label in the section (x/y neighbours):
    membranes, whether the labels leave a gap there (gala) or touch (medulla)."""
    boundary = labels == 0
    for axis in (1, 2):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        differ = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= differ
        boundary[tuple(b)] |= differ
    return boundary


def profile_diameters_nm(labels: np.ndarray, voxel_size) -> np.ndarray:
    """Equivalent diameter of every object's profile in every section, in nm."""
    areas = []
    for section in labels:
        ids, counts = np.unique(section[section != 0], return_counts=True)
        areas.append(counts)
    areas = np.concatenate(areas).astype(float) * voxel_size[1] * voxel_size[2]
    return 2.0 * np.sqrt(areas / np.pi)


def measure(config_name: str, model_path: Path) -> dict:
    config = load_config(config_name)
    region = config.data.validation[0]  # the held-out labels nearest to what a user brings
    raw_array = open_array(region.path, config.data.raw_dataset)
    labels_array = open_array(region.path, config.data.labels_dataset)
    raw_all, labels = raw_array[region.roi], labels_array[region.roi]
    mean, std = intensity_stats(raw_array)
    scaled = raw_all / 255.0
    z = (scaled - mean) / std
    boundary = label_boundaries(labels)
    inside = ~boundary
    # eroded interiors: away from the membrane, where dark blobs are organelles
    interior = ndimage.binary_erosion(inside, iterations=2)
    zb, zi = z[boundary], z[interior]
    d_prime = float((zi.mean() - zb.mean()) / np.sqrt(0.5 * (zi.var() + zb.var())))
    diameters = profile_diameters_nm(labels, config.data.voxel_size)
    fov = np.array(config.model.input_shape) * np.array(config.data.voxel_size)
    context = config.derived()["context_nm"]

    # the model on a central field (one pass, no test-time augmentation: a picture)
    model, _ = load_model(model_path)
    input_shape, output_shape = config.prediction_shapes
    side = min(FIELD_NM // config.data.voxel_size[1], raw_all.shape[1], raw_all.shape[2])
    zc, yc, xc = (s // 2 for s in raw_all.shape)
    depth = min(raw_all.shape[0], output_shape[0])
    field = (slice(zc - depth // 2, zc - depth // 2 + depth), slice(yc - side // 2, yc - side // 2 + side),
             slice(xc - side // 2, xc - side // 2 + side))
    outputs = dict(zip(model.outputs, predict_array(model, scaled[field], input_shape, output_shape,
                                                      Normalization(mean, std))))
    affs = outputs["affs"][:3]
    return {
        "config": config_name,
        "volume": str(region.path),
        "voxel_size_nm": list(config.data.voxel_size),
        "raw_percentiles_1_50_99": [float(v) for v in np.percentile(raw_all, [1, 50, 99])],
        "raw_mean_std": [float(raw_all.mean()), float(raw_all.std())],
        "zscored_boundary_mean": float(zb.mean()),
        "zscored_inside_mean": float(zi.mean()),
        "membrane_d_prime": d_prime,
        "boundary_fraction": float(boundary.mean()),
        "dark_inside_fraction": float((zi < np.median(zb)).mean()),
        "profile_diameter_nm_median": float(np.median(diameters)),
        "profile_diameter_nm_p90": float(np.percentile(diameters, 90)),
        "profiles_per_section_um2": float(len(diameters) / labels.shape[0]
                                          / (labels.shape[1] * labels.shape[2] * np.prod(config.data.voxel_size[1:])
                                             / 1e6)),
        "network_input_nm": [int(v) for v in fov],
        "network_context_nm": [int(v) for v in context],
        "affinity_uncertainty": affinity_uncertainty(affs),
        "_picture": {"raw": scaled[field][depth // 2], "labels": labels[field][depth // 2],
                     "affs": affs.mean(axis=0)[depth // 2], "zb": zb, "zi": zi},
    }


def picture(measured: list[dict], out: Path, model_name: str) -> None:
    from lsdflow.core.view.plots import _label_colours

    fig, axes = plt.subplots(len(measured), 4, figsize=(16, 4 * len(measured)))
    axes = np.atleast_2d(axes)
    for row, m in zip(axes, measured):
        p = m["_picture"]
        row[0].imshow(p["raw"], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{m['config']}: raw ({FIELD_NM} nm field)")
        row[1].imshow(_label_colours(p["labels"]))
        row[1].set_title(f"labels (median profile {m['profile_diameter_nm_median']:.0f} nm)")
        row[2].imshow(p["affs"], cmap="gray", vmin=0, vmax=1)
        row[2].set_title(f"{model_name}: mean affinity (uncertainty {m['affinity_uncertainty']:.2f})")
        bins = np.linspace(-4, 4, 81)
        row[3].hist(p["zi"], bins, density=True, alpha=0.6, label="inside objects")
        row[3].hist(p["zb"], bins, density=True, alpha=0.6, label="label boundaries")
        row[3].set_title(f"z-scored intensity (membrane d' {m['membrane_d_prime']:.2f})")
        row[3].legend()
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="dataset config (repeatable; default gala and medulla)")
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "pretrained" / "gala_mtlsd.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "acquisition_shift.json")
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "images" / "acquisition_shift.png")
    args = parser.parse_args()
    measured = [measure(name, args.model) for name in args.config or ["gala", "medulla"]]
    rows = [k for k in measured[0] if not k.startswith("_") and k not in ("config", "volume")]
    print(f"{'':32s}" + "".join(f"{m['config']:>26s}" for m in measured))
    for key in rows:
        cells = []
        for m in measured:
            v = m[key]
            cells.append(", ".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:.3f}")
        print(f"{key:32s}" + "".join(f"{c:>26s}" for c in cells))
    picture(measured, args.picture, args.model.stem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{k: v for k, v in m.items() if not k.startswith("_")} for m in measured],
                                   indent=2))
    print(f"wrote {args.out} and {args.picture}")


if __name__ == "__main__":
    main()
