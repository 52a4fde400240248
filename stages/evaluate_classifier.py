"""Stage `evaluate_classifier`: rebuild models/classifier.pt from its checkpoint, score it on the
test split of every built variant (its own, the other of original/rembg, and the controlled
ones); write the headline metrics (with the BG-gap and only-BG accuracy), their detail, per-image
predictions, the model's row of the train × test variant matrix and the confusion matrix."""
from __future__ import annotations

from fashionbg.core.cli import stage_main
from fashionbg.core.params import load_params
from fashionbg.nn.params import read_evaluate


@stage_main
def main() -> None:
    settings = read_evaluate(load_params())
    # torch loads only once the params are checked: a refused value costs under a second
    from fashionbg.classify.evaluation import evaluate_classifier

    evaluate_classifier(settings)


if __name__ == "__main__":
    main()
