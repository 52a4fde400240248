"""Reading a study's experiments back (untrusted input) and saying what they show: results,
the statistics (stats), the report and its claims' verdicts (report), the Backgrounds
Challenge section (backgrounds), the example panels (panel) and the calibration of the
statistics on simulated studies (calibrate). May import plan and
fashionbg.study.experiments, never run."""
