"""The study: a grid of DVC experiments (cells) and the report that reads them back, in three
rooms whose imports run one way (tests/test_study_layout.py checks it):

- plan/  what to run: study.yaml → arms, claims, cells; the datasets; the pre-flight.
- run/   running the cells: the engines (DVC's queue, Ray), workspaces, upstream runs.
- read/  reading the experiments back: results, statistics, the report and its figures.

`run` and `read` may import `plan`, never each other; `plan` imports neither. What both need
(the experiments' git refs, the study's cache folder, running a git command) is in
experiments.py, which imports no room; `python -m fashionbg.study` (__main__) is the one
command line and the only module that imports all three.
"""
