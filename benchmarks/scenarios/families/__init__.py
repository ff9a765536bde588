"""The scenario families, one module per kind of trouble (and one for healthy runs that set traps).

Each module builds its jobs and lists its scenarios in ``SCENARIOS``; ``benchmarks.scenarios.registry``
collects them. The rule ids each fault expects are named once here, by the cause they stand for.
"""

# Rules whose cause is "the learning rate is too high" (or no clipping), by the symptom they read.
LR_HIGH = ("update-ratio-high", "loss-diverging", "gradient-explosion", "loss-nonfinite", "lr-jump")
LR_LOW = ("update-ratio-low", "loss-not-decreasing")
