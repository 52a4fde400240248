"""Stage `train_classifier`: train `classify.arch` on data/prepared/${data.variant} and keep
the epoch the model-selection rule picks (models/classifier.pt, dvclive curves)."""
from __future__ import annotations

import logging

from fashionbg.classify.data import augmentation, split_loader
from fashionbg.classify.engine import classify_step, make_optimizer, validator
from fashionbg.classify.models import build_classifier
from fashionbg.classify.params import ClassifyConfig, read_classify
from fashionbg.contracts.params import read_variant
from fashionbg.contracts.prepared import load_prepared
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.nn.augment import place_augmentation
from fashionbg.nn.checkpoint import Checkpoint, save_checkpoint
from fashionbg.nn.distributed import main_live
from fashionbg.nn.engine import fit
from fashionbg.nn.launch import TrainingRun, run_training

log = logging.getLogger("train_classifier")


@stage_main
def main() -> None:
    params = load_params()
    variant, config = read_variant(params), read_classify(params)
    run_training("stages.train_classifier", params, config.device, "classify.device", config.seed,
                 lambda run: train(run, variant, config))


def train(run: TrainingRun, variant: str, config: ClassifyConfig) -> None:
    data = load_prepared(paths.prepared(variant))
    labels = data.meta["labels"]
    if not labels or (data.labels[data.indices("train")] < 0).any():
        raise UserError("this data source has no classification labels; "
                        "choose a source with a classification task (e.g. demo, fashionstyle14)")
    size = tuple(data.meta["image_size"])
    # a v2 transform also takes (image, label) pairs, leaving the label as it is
    loader_augment, step = place_augmentation(augmentation(config.augment, size), classify_step,
                                              run.augment_on_device)
    train_loader = split_loader(data, "train", run.batch_size(config.batch_size,
                                                               "classify.batch_size"),
                                loader_augment, run.generator, run.loader)
    val_rows = data.indices("val")
    validate = (validator(split_loader(data, "val", config.batch_size, options=run.loader),
                          run.device, labels) if len(val_rows) and run.world.is_main else None)
    model = run.place(build_classifier(config, len(labels), load_weights=True))
    log.info("%s on %s (%d train, %d val images of %s) on %s, %d process(es)", config.arch,
             variant, len(data.indices("train")), len(val_rows), "x".join(map(str, size)),
             run.device, run.world.size)
    with main_live(run.world, str(paths.live_dir("train_classifier"))) as live:
        result = fit(model, train_loader, step, validate, "top1", make_optimizer(config, model),
                     config.epochs, run.device, live, run.world, run.amp)
    if run.world.is_main:
        save_checkpoint(paths.CLASSIFIER, Checkpoint(
            task="classify", variant=variant, config=config.to_dict(), classes=list(labels),
            image_size=list(size), epoch=result.best_epoch, model=result.state))
        log.info("kept epoch %d (val top1 %s); wrote %s", result.best_epoch, result.best_score,
                 paths.CLASSIFIER)


if __name__ == "__main__":
    main()
