"""Stage `train_classifier`: train `classify.arch` on data/prepared/${data.variant} and keep
the epoch the model-selection rule picks (models/classifier.pt, dvclive curves)."""
from __future__ import annotations

from fashionbg.classify.params import read_classify
from fashionbg.contracts.params import read_variant
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.params import load_params
from fashionbg.nn.params import read_train


@stage_main
def main() -> None:
    params = load_params()
    variant, config = read_variant(params), read_classify(params)
    read_train(params)
    # torch loads only once the params are checked: a refused value costs under a second
    from fashionbg.classify.task import ClassifyTask
    from fashionbg.contracts.prepared import load_prepared
    from fashionbg.nn.launch import run_training
    from fashionbg.nn.training import train_task

    run_training("stages.train_classifier", params, config.device, "classify.device", config.seed,
                 lambda run: train_task(run, ClassifyTask(config, load_prepared(
                     paths.prepared(variant))), variant, config))


if __name__ == "__main__":
    main()
