"""Running a study's cells as DVC experiments: the engine interface (protocol), the registry
that picks one by name (engines), DVC's queue (runner) and Ray (ray_engine), one cell in a
workspace of its own (workspace), each distinct upstream run once first (upstream), the cache
check after a run (cache_check) and the progress bar. May import plan and
fashionbg.study.experiments, never read."""
