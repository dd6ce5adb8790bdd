"""Defaults of the command line, in a module that imports nothing heavy (the command line lists them without
loading torch): the units (``ap``) or heads (``claim``) ``xlalign find`` keeps, and the closed loop's evaluation
sizes."""

from steer.choices import CLAIM_HEADS

DEFAULT_K = {"ap": 1000, "claim": CLAIM_HEADS}
# The closed loop's evaluation sizes: held-out texts per language for the loss, prompts for output fidelity.
LOSS_SENTENCES = 32
PROMPTS = 8
