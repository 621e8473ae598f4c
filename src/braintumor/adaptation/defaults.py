"""The adaptation methods' names and their settings: fixed a priori, or chosen without the Testing split.

How each was chosen is in the documentation (Site adaptation); none was chosen on Testing.
"""

from __future__ import annotations

from braintumor.config import ADAPTATION_METHODS, AdaptConfig

# Methods in the order `braintumor adapt --help` lists them; combinations join names with "+".
METHODS = ADAPTATION_METHODS
# The default for recipes without their own `adapt.method`: the source hold-out proxy of the main README
# bundle chose it (benchmarks/results/site_adaptation.json). A recipe's `adapt.method` overrides it.
DEFAULT_METHOD = AdaptConfig().method
# Fewest target images each method needs: class priors need a few per class, covariances many more.
MIN_IMAGES = {"adabn": 32, "standardize": 32, "coral": 64, "em": 16, "t3a": 16, "shot": 32}
# CORAL's covariance shrinkage towards the scaled identity (a priori: 1280 dimensions, a few hundred images).
CORAL_SHRINKAGE = 0.5
# Standardisation's floor on a target feature's standard deviation, in source units (no division by ~0).
MIN_STD = 1e-3
# EM (Saerens et al. 2002): stop when no prior moves by more than this, or after this many rounds.
EM_TOLERANCE = 1e-6
EM_MAX_ITERATIONS = 200
# T3A (Iwasawa and Matsuo 2021): the most confident target features kept per class.
T3A_FILTER = 20
# SHOT's information maximisation on the last layer only: Adam steps, learning rate, diversity weight.
SHOT_STEPS = 100
SHOT_LEARNING_RATE = 1e-2
SHOT_DIVERSITY = 1.0
# AdaBN: images per forward pass while the backbone's BatchNorm statistics are re-estimated.
ADABN_BATCH_SIZE = 64
# Shift evidence: a target whose share of guard-flagged images is at most this many times the validation
# split's rate, and whose mean feature sits within NEAR_MEAN_SHIFT source deviations, is "near the source".
NEAR_FLAG_RATIO = 2.0
NEAR_MEAN_SHIFT = 0.15
# A change in the share of images the referral threshold refers larger than this (a priori) is a warning.
REFERRAL_CHANGE = 0.05
SEED = 0
