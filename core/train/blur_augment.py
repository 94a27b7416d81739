"""Random Gaussian blur of the raw data in training: acquisitions differ in sharpness
(medulla is about as smooth as gala blurred by 0.7–0.8 voxels, benchmarks/acquisition_shift.py),
and a network that only saw sharp data misreads soft membranes.

gunpowder has intensity, noise and defect augmentations but no blur, hence this node. It
blurs with a sigma drawn per batch in nm (within sections only for anisotropic data),
then z-scores the batch again, so that blurring changes sharpness, not the contrast
scale IntensityAugment controls.
"""

from __future__ import annotations

import random

import gunpowder as gp
import numpy as np
from scipy import ndimage


class BlurAugment(gp.BatchFilter):
    def __init__(self, array: gp.ArrayKey, sigma_nm: tuple[float, float], p: float = 0.5,
                 in_plane_only: bool = False):
        self.array = array
        self.sigma_nm = sigma_nm
        self.p = p
        self.in_plane_only = in_plane_only

    def setup(self):
        self.enable_autoskip()
        self.updates(self.array, self.spec[self.array])

    def skip_node(self, request):
        return random.random() > self.p

    def prepare(self, request):
        deps = gp.BatchRequest()
        deps[self.array] = request[self.array].copy()
        return deps

    def process(self, batch, request):
        raw = batch.arrays[self.array]
        rng = np.random.default_rng(request.random_seed)
        sigma_nm = rng.uniform(*self.sigma_nm)
        voxel_size = np.array(raw.spec.voxel_size, dtype=float)
        sigma = sigma_nm / voxel_size
        if self.in_plane_only:
            sigma[0] = 0.0
        data = raw.data.astype(np.float32)
        mean, std = float(data.mean()), float(data.std())
        blurred = ndimage.gaussian_filter(data, sigma, mode="reflect")
        # same mean and spread as before: only the sharpness changes
        raw.data = ((blurred - blurred.mean()) * (std / max(float(blurred.std()), 1e-6)) + mean).astype(raw.data.dtype)
