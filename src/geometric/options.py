"""The geometric pipeline's choices and shared defaults, in one dependency-free place.

config.py builds the command line from these and the stages validate their confs against
them, so a choice or a default is written once. Importing this module loads nothing but
Python (no cv2, h5py, torch or pycolmap): ``--help`` and the config stay light.
"""

from __future__ import annotations

FEATURE_NAMES = ("sift", "aliked", "disk")  # sift: OpenCV; aliked, disk: torch networks
LEARNED_FEATURE_NAMES = ("aliked", "disk")  # the networks, run by torch
MATCHERS = ("nn-ratio", "lightglue")  # mutual nearest neighbours + ratio test; learned
RETRIEVALS = ("vlad", "backbone")  # global descriptors for pair selection
UNREGISTERED_POLICIES = ("outliers", "nan")  # what becomes of images SfM cannot register
TORCH_DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when torch sees it, else the CPU

# Verified inliers for a pair to count (MatchConf) and for an edge of the match graph
# (GraphConf). 10 inliers: measured on the demo data (score 68 -> 76) with no false merge
# on realdev.
MIN_VERIFIED_INLIERS = 10
GRAPH_MIN_INLIERS = 10
