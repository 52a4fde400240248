"""Stage `train_segmenter`: train a semantic (smp) or instance (Mask R-CNN) model on
data/prepared/${data.variant} and keep the epoch the model-selection rule picks
(models/segmenter.pt, dvclive curves)."""
from __future__ import annotations

from fashionbg.contracts.params import read_variant
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.params import load_params
from fashionbg.nn.params import read_train
from fashionbg.segment.params import read_segment


@stage_main
def main() -> None:
    params = load_params()
    variant, config = read_variant(params), read_segment(params)
    read_train(params)
    # torch loads only once the params are checked: a refused value costs under a second
    from fashionbg.contracts.prepared import load_prepared
    from fashionbg.nn.launch import run_training
    from fashionbg.nn.training import train_task
    from fashionbg.segment.tasks import make_task

    run_training("stages.train_segmenter", params, config.device, "segment.device", config.seed,
                 lambda run: train_task(run, make_task(config, load_prepared(
                     paths.prepared(variant)), paths.RAW), variant, config))


if __name__ == "__main__":
    main()
