"""After the trials: results, Pareto fronts, figures and reports, as pure functions on files."""

__all__ = ["figures", "pareto", "report", "results", "studydir"]
