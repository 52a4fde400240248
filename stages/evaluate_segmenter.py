"""Stage `evaluate_segmenter`: rebuild models/segmenter.pt from its checkpoint, score it, with
the same ground truth, on the test images of every built variant (its own, the other of
original/rembg, and the controlled ones); write the headline metrics (mIoU or mask AP, with the
BG-gap and only-BG score), their detail, per-image results and plots/segmentation/ (overlays per
test variant, per-class scores, the model's row of the train × test variant matrix)."""
from __future__ import annotations

from fashionbg.core.cli import stage_main
from fashionbg.core.params import load_params
from fashionbg.nn.params import read_evaluate


@stage_main
def main() -> None:
    settings = read_evaluate(load_params())
    # torch loads only once the params are checked: a refused value costs under a second
    from fashionbg.segment.evaluation import evaluate_segmenter

    evaluate_segmenter(settings)


if __name__ == "__main__":
    main()
