"""Analysis of a sweep's results store: scaling series (scaling.py), the scaling model (scaling_model.py),
plots (plots.py) and the report (report.py). Everything but plots/report is pure: numbers in, numbers out."""
