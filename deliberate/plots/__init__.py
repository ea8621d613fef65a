"""Paper-style matplotlib figures from run metrics and evaluation outputs (notebooks/reproduce_figures.ipynb)."""
