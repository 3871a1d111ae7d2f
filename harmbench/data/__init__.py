"""Scans, cohorts, loading real data, and the simulated traveling-subject cohort."""
