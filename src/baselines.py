"""Reference predictors that need no model: the floor any real pipeline must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.utils_io import PosePrediction


def single_cluster_identity(test_images: pd.DataFrame) -> list[PosePrediction]:
    """Every image of a dataset in one cluster ``cluster0`` with the identity pose.

    All cameras share one centre, so no similarity can register them: mAA is 0 and the
    clustering score is the share of scene images among all images. Rows: dataset, image.
    """
    return [PosePrediction(dataset=d, image=i, scene="cluster0", R_cw=np.eye(3),
                           t_cw=np.zeros(3))
            for d, i in zip(test_images["dataset"], test_images["image"])]
