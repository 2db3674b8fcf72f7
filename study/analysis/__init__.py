"""Analysis: results table, aggregation over seeds, claims, figures, comparison, report."""
