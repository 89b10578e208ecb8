"""Human-readable renderings of IR graphs and results."""
