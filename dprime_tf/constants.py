"""The SPEC's constants, the method's choices and the tf.distribute strategy
names: what the command lines define their flags with and check settings
against before TensorFlow loads (this module imports nothing). dprime_tf.prime
and dprime_tf.distribute re-export them."""

# SPEC constants (the reference's defaults).
RHO = 0.1
SCHEDFREQ = 10
THRESHOLD_MULTIPLIER = 1.05  # m
FI_EWMA_BETA = 0.2
TAU_INIT = 1.0  # --init_alpha_threshold
ADMM_FREQ = 10
# The official ADMM script never passes its zu_ewma flag (0.2), so the
# model's default 1.0 applies: U = U + (alpha - Z). SPEC section 9.
ZU_EWMA = 1.0
# The official FI EWMA is the raw FI after each of the first two weight steps
# (its FI tensor is aliased and zeroed in place), then the recurrence.
FI_EWMA_SEED_STEPS = 2

SCHEDULES = ("fixed", "dynamic")
SPLITS = ("half", "dynamic")
REGULARIZERS = ("none", "prox", "admm")

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
