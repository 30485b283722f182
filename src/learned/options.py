"""The learned pipeline's shared defaults, in one dependency-free place.

config.Config's fields and the stage settings (``src.learned.clustering.ClusterSettings``)
both read these, so a default is written once. Importing this module loads nothing but
Python (no TensorFlow, numpy or scikit-learn): ``--help`` and the config stay light.
"""

from __future__ import annotations

# Outlier-head probability above which an image is an outlier (clustering, and hybrid mode
# before matching): the head is a sigmoid trained with binary cross-entropy, so above 0.5 it
# finds "outlier" the likelier answer. Not tuned on a benchmark.
OUTLIER_THRESHOLD = 0.5

# DBSCAN over predicted poses and backbone features (ClusterSettings). min_samples 3, a core
# image and two neighbours: a scene has at least three images, as in the geometric pipeline
# (its MIN_SCENE_SIZE). A dataset with fewer kept images is one cluster.
CLUSTER_MIN_SAMPLES = 3
# eps = CLUSTER_EPS_SCALE x the CLUSTER_EPS_QUANTILE quantile of the distances to each
# image's min_samples-th neighbour: set by the data, so it follows how tight a dataset's
# scenes are; 1.5 x the median lets most images of a scene reach a neighbour while images
# far from every scene stay noise. Not tuned on a benchmark.
CLUSTER_EPS_QUANTILE = 0.5
CLUSTER_EPS_SCALE = 1.5
# Weights of the pose blocks and of the backbone-feature block. The blocks are scaled first
# so that their widths do not count (src.learned.clustering), so equal weights make poses and
# features count alike.
CLUSTER_POSE_WEIGHT = 1.0
CLUSTER_FEATURE_WEIGHT = 1.0
