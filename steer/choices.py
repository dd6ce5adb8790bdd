"""The names steering options choose from, in a module that imports nothing (the command line lists them without
loading torch): the method registry and INCLINE's strengths."""

# The method registry: one line per method, its name (the one name used by `xlalign find`, `xlalign evaluate`,
# presets and the docs) -> where its record (a steer.methods.Method) lives. The order is the evaluation grid's.
REGISTRY = {
    "shift": "steer.methods.shift:SHIFT",
    "pca": "steer.methods.shift:PCA",
    "logistic": "steer.methods.shift:LOGISTIC",
    "diffmean": "steer.methods.diffmean:METHOD",
    "erase": "steer.methods.erase:METHOD",
    "sandwich": "steer.methods.sandwich:METHOD",
    "incline": "steer.methods.incline:METHOD",
    "procrustes": "steer.methods.procrustes:METHOD",
    "lape": "steer.methods.lape:METHOD",
    "ap": "steer.methods.ap:METHOD",
    "router": "steer.methods.router:METHOD",
    "steermoe": "steer.methods.steermoe:METHOD",
    "claim": "steer.methods.claim:METHOD",
}
# Names an earlier release used, accepted with a FutureWarning for one release.
RENAMED = {"heads": "claim", "mean": "shift"}
# The kinds of artifact `xlalign find` writes, each with the method it uses when --method is not given.
FIND_KINDS = {"neurons": "lape", "shift": "shift", "map": "incline", "eraser": "erase"}
# CLAIM: heads kept per language (the closed loop and `xlalign find` alike).
CLAIM_HEADS = 8
# INCLINE's released scripts sweep sigma over -1..1 by 0.1; the closed loop runs two of them by default.
SIGMAS = tuple(round(0.1 * step, 1) for step in range(-10, 11))
INCLINE_SIGMAS = (-0.5, 0.5)
