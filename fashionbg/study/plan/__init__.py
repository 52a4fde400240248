"""Planning what a study runs: study.yaml read into arms, claims and cells (definition), the
datasets said once (datasets), and the pre-flight that checks a preset and times it before
anything runs (preflight, timing, schedule). Imports no other room of the study."""
