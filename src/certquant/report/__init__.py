"""Reports: pure functions of result files (tables, plots). They read run folders and never run models."""

from certquant.report.certified import (
    CertifyRun,
    certified_accuracy_table,
    load_certify_run,
    plot_certified_accuracy,
)

__all__ = ["CertifyRun", "certified_accuracy_table", "load_certify_run", "plot_certified_accuracy"]
