"""End-to-end recipes, above both task packages (docs/architecture.md#packages): `make demo`
(demo.py) and `make reproduce` (reproduce.py) run the tools in order (steps.py), collect their
results and draw the pictures (report.py); synthetic.py writes the synthetic mini-Ego4D with
both tasks' generators (docs/data.md#synthetic)."""
