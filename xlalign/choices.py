"""The names ``xlalign find`` offers, in a module that imports nothing heavy (the command line lists them
without loading torch): each kind of finding with its methods (the first is the default), and the default
number of units (``ap``) or heads (``claim``) kept."""

FIND_METHODS = {
    "neurons": ("lape", "ap"),
    "shift": ("mean", "pca", "logistic", "claim"),
    "map": ("incline", "procrustes"),
}
DEFAULT_K = {"ap": 1000, "claim": 8}
# The closed loop's evaluation sizes: held-out texts per language for the loss, prompts for output fidelity.
LOSS_SENTENCES = 32
PROMPTS = 8
