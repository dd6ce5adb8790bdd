"""The names steering options choose from, in a module that imports nothing (the command line lists them without
loading torch): the closed loop's methods and INCLINE's strengths."""

METHODS = ("shift", "diffmean", "erase", "sandwich", "incline", "procrustes", "lape", "ap", "heads", "router", "steermoe")
# INCLINE's released scripts sweep sigma over -1..1 by 0.1; the closed loop runs two of them by default.
SIGMAS = tuple(round(0.1 * step, 1) for step in range(-10, 11))
INCLINE_SIGMAS = (-0.5, 0.5)
