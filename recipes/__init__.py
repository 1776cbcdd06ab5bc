"""End-to-end recipes: `make demo` (demo.py) and `make reproduce` (reproduce.py) run the
tools in order (steps.py), collect their results and draw the pictures (report.py)."""
