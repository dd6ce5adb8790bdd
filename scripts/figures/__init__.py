"""Scripts that redraw every figure of results/ from the committed CSVs (no model needed), each as PNG and PDF
beside the data it shows, in the paper style of :mod:`probes.plots.style`. ``python -m scripts.figures`` (or
``make figures``) runs them all; ``python -m scripts.figures.<name>`` runs one."""

SCRIPTS = ("steering_before_after", "steering_pareto", "bf16_alignment", "lape_ablation", "moe_routing")
