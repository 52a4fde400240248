import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from skimage import data as skdata

from fashionbg.background.composite import composite
from fashionbg.background.params import SOD_MODELS, parse_fill, read_background
from fashionbg.background.sod import (
    Batched,
    MaskCache,
    SodOptions,
    batched_model,
    cache_key,
    make_session,
    predict_alpha,
    providers,
    remove_backgrounds,
    resolve_batch,
)
from fashionbg.background.weights import MODELS, md5sum
from fashionbg.background.workers import mask_iou, u2net_input
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.raw import RawWriter, read_index
from fashionbg.core.errors import ParamError, UserError
from fashionbg.ingest.hygiene import open_rgb


def test_weights_are_the_real_u2netp(u2netp_home):
    path = u2netp_home / "u2netp.onnx"
    assert path.stat().st_size == 4_574_861
    assert md5sum(path) == MODELS["u2netp"].md5
    assert set(MODELS) == set(SOD_MODELS)


@pytest.mark.parametrize("damage", ["truncated", "byte_flipped"])
def test_a_damaged_copy_of_the_weights_is_refused_in_one_line(tmp_path, u2netp_home, damage):
    """A download cut short or a tampered file (same size, one byte changed) never reaches
    onnxruntime: the session refuses it, naming the file and what to run."""
    weights = bytearray((u2netp_home / "u2netp.onnx").read_bytes())
    if damage == "truncated":
        del weights[len(weights) // 2:]
    else:
        weights[len(weights) // 2] ^= 0xFF
    (tmp_path / "u2netp.onnx").write_bytes(weights)
    with pytest.raises(UserError) as refused:
        make_session("u2netp", tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "u2netp.onnx") in message
    assert "not the expected" in message and "fetch_model" in message


def test_u2netp_finds_the_astronaut(u2netp_session):
    photo = Image.fromarray(skdata.astronaut())
    alpha = predict_alpha(photo, u2netp_session, SodOptions())
    fg = alpha >= 128
    assert alpha.shape == (512, 512)
    assert fg[40:160, 170:280].mean() > 0.9      # face and hair
    assert fg[300:450, 60:250].mean() > 0.9      # orange suit
    assert fg[0:150, 0:50].mean() < 0.1          # flag on the left
    assert fg[0:230, 380:500].mean() < 0.1       # shuttle model behind her


def test_alpha_matting_option_changes_the_alpha(u2netp_session):
    photo = Image.fromarray(skdata.astronaut()).resize((256, 256))
    plain = predict_alpha(photo, u2netp_session, SodOptions())
    matted = predict_alpha(photo, u2netp_session, SodOptions(alpha_matting=True))
    assert matted.shape == plain.shape
    assert not np.array_equal(plain, matted)
    assert mask_iou(matted, plain >= 128) > 0.8


def tiny_onnx(path):
    """A model with U²-Net's interface whose 'saliency' is the mean channel brightness."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 320, 320])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceMean", ["input", "axes"], ["output"], keepdims=1)
    graph = helper.make_graph([node], "brightness", [inp], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture
def tiny_session(tmp_path, monkeypatch):
    from rembg import new_session

    tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    return new_session("u2net_custom", model_path=str(tmp_path / "tiny.onnx"))


def square_photo(size=64):
    img = np.full((size, size, 3), 20, np.uint8)
    img[16:48, 16:48] = 230
    truth = np.zeros((size, size), np.uint8)
    truth[16:48, 16:48] = 3
    return img, truth


def test_stage_loop_saves_alphas_scores_iou_and_records_failures(tmp_path, tiny_session):
    writer = RawWriter(tmp_path / "raw")
    img, truth = square_photo()
    writer.add_image("a/one.png", Image.fromarray(img), "train", "a", truth)
    writer.add_image("a/two.jpg", Image.fromarray(img), "test", "a", truth)
    writer.add_image("a/broken.jpg", b"not a jpeg at all", "val", "a")
    writer.finish(["a"], ["background", "x", "y", "thing"])

    out = tmp_path / "rembg"
    report = remove_backgrounds(read_index(tmp_path / "raw"), tmp_path / "raw", out,
                                tiny_session, SodOptions())
    assert report.images == 2
    assert [p for p, _ in report.failures] == ["images/a/broken.jpg"]
    alpha = np.asarray(Image.open(out / "masks/a/one.png"))
    assert alpha[30, 30] > 200 and alpha[2, 2] < 50
    assert report.metrics("tiny")["mean_iou"] > 0.9
    assert report.metrics("tiny")["failures"] == 1


def test_alpha_path_mirrors_the_image_path():
    assert alpha_path("images/casual/x_0001.jpg") == "masks/casual/x_0001.png"


def test_mask_iou_on_known_masks():
    alpha = np.zeros((4, 4), np.uint8)
    alpha[:2, :] = 255                      # 8 pixels predicted
    truth = np.zeros((4, 4), bool)
    truth[:, :2] = True                     # 8 true, 4 overlap, union 12
    assert mask_iou(alpha, truth) == pytest.approx(4 / 12)
    assert mask_iou(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool)) == 1.0


def test_composite_blends_with_alpha():
    image = np.full((1, 3, 3), 200, np.uint8)
    alpha = np.array([[255, 0, 128]], np.uint8)
    out = composite(image, alpha, (0, 0, 100))
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [0, 0, 100]
    assert out[0, 2].tolist() == [100, 100, 150]


@pytest.mark.parametrize("value, expected", [("black", (0, 0, 0)), ("white", (255, 255, 255)),
                                             ([10, 20, 30], (10, 20, 30))])
def test_parse_fill_accepts_names_and_triples(value, expected):
    assert parse_fill(value) == expected


@pytest.mark.parametrize("value", ["purple", [1, 2], [0, 0, 256], [0.5, 0, 0], None])
def test_parse_fill_rejects_non_colours(value):
    with pytest.raises(ParamError, match=r"background\.fill .* black, white, gray"):
        parse_fill(value)


class Unusable:
    """A session whose model fails if it is ever asked for a mask."""

    @property
    def inner_session(self):
        return self

    def __getattr__(self, name):
        raise AssertionError("the mask should have come from the cache")


def test_masks_are_reused_from_the_cache_only_for_the_same_image_and_settings(tmp_path,
                                                                              tiny_session):
    writer = RawWriter(tmp_path / "raw")
    img, truth = square_photo()
    writer.add_image("a/one.png", Image.fromarray(img), "train", "a", truth)
    writer.add_image("a/two.png", Image.fromarray(255 - img), "test", "a", truth)
    writer.finish(["a"], ["background", "x", "y", "thing"])
    rows = read_index(tmp_path / "raw")
    cache = MaskCache(tmp_path / "cache", cache_key("u2netp", SodOptions(), "cpu"))

    first = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "a", tiny_session,
                               SodOptions(), cache)
    again = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "b", Unusable(),
                               SodOptions(), cache)
    assert (first.computed, again.computed, again.images) == (2, 0, 2)
    for name in ("one", "two"):
        assert (tmp_path / f"a/masks/a/{name}.png").read_bytes() == \
            (tmp_path / f"b/masks/a/{name}.png").read_bytes()
    assert again.metrics("tiny")["mean_iou"] == first.metrics("tiny")["mean_iou"]

    # A truncated cache entry (a run killed while writing it) is computed again.
    entry = next(cache.dir.glob("*/*.png"))
    entry.write_bytes(entry.read_bytes()[:20])
    resumed = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "c", tiny_session,
                                 SodOptions(), cache)
    assert resumed.computed == 1
    # Other settings never see these masks.
    keys = {cache_key("u2netp", SodOptions(), "cpu"), cache_key("u2net", SodOptions(), "cpu"),
            cache_key("u2netp", SodOptions(alpha_matting=True), "cpu"),
            cache_key("u2netp", SodOptions(post_process_mask=True), "cpu"),
            cache_key("u2netp", SodOptions(), "cuda")}
    assert len(keys) == 5


def test_background_device_picks_the_onnx_runtime_providers():
    import onnxruntime as ort

    assert providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():   # onnxruntime-gpu
        assert providers("auto") == providers("cuda") == ["CUDAExecutionProvider",
                                                          "CPUExecutionProvider"]
    else:
        assert providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(UserError, match="install onnxruntime-gpu"):
            providers("cuda")


def real_photos(tmp_path):
    """Three real photos of different sizes (one grey), written to a raw folder."""
    import matplotlib

    writer = RawWriter(tmp_path / "raw")
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    for name, photo in (("astronaut.png", Image.fromarray(skdata.astronaut())),
                        ("camera.png", Image.fromarray(skdata.camera()).convert("RGB")),
                        ("grace.jpg", Image.open(grace))):
        writer.add_image(f"a/{name}", photo, "train", "a")
    writer.finish(["a"], [])
    return read_index(tmp_path / "raw")


@pytest.mark.parametrize("post_process_mask", [False, True])
def test_batched_inference_gives_rembgs_masks(tmp_path, u2netp_home, u2netp_session,
                                              post_process_mask):
    rows, options = real_photos(tmp_path), SodOptions(post_process_mask=post_process_mask)
    batched = batched_model(u2netp_session, "u2netp", u2netp_home, 2)   # a full and a part batch
    one = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "one", u2netp_session, options)
    two = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "two", u2netp_session, options,
                             batched=batched)
    assert (one.images, two.images, two.computed, two.failures) == (3, 3, 3, [])
    for row in rows:
        a, b = (np.asarray(Image.open(tmp_path / d / alpha_path(row.path)), np.int16)
                for d in ("one", "two"))
        assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0, row.path


def test_batch_size_auto_and_cache_keys():
    assert (resolve_batch(None, "cpu"), resolve_batch(None, "cuda"), resolve_batch(4, "cpu")) \
        == (1, 8, 4)
    # one photo per call keeps the key masks were cached under before batching existed
    assert cache_key("u2netp", SodOptions(), "cpu", 1) == cache_key("u2netp", SodOptions(), "cpu")
    assert cache_key("u2netp", SodOptions(), "cpu", 8) != cache_key("u2netp", SodOptions(), "cpu")
    with pytest.raises(ParamError, match="auto or 1 with alpha_matting"):
        read_background({"background": {"model": "u2netp", "alpha_matting": True,
                                         "post_process_mask": False, "fill": "black",
                                         "person_fill": "tile", "device": "cpu",
                                         "batch_size": 4}})


@pytest.mark.parametrize("options", [SodOptions(), SodOptions(post_process_mask=True),
                                     SodOptions(alpha_matting=True)])
def test_worker_pipeline_writes_the_serial_paths_masks_byte_for_byte(tmp_path, u2netp_home,
                                                                     u2netp_session, options):
    """The masks the workers finish are the bytes rembg's own remove() gives, one photo after
    the other, encoded once: the same file in the output and in the cache."""
    rows = real_photos(tmp_path)
    if options.alpha_matting:      # matting is slow: one small photo
        rows = rows[1:2]
    cache = MaskCache(tmp_path / "cache", cache_key("u2netp", options, "cpu"))
    report = remove_backgrounds(rows, tmp_path / "raw", tmp_path / "out", u2netp_session,
                                options, cache, processes=2)
    assert (report.images, report.computed, report.failures) == (len(rows), len(rows), [])
    for row in rows:
        serial = predict_alpha(open_rgb(tmp_path / "raw" / row.path), u2netp_session, options)
        png = io.BytesIO()
        Image.fromarray(serial, mode="L").save(png, format="PNG")
        written = (tmp_path / "out" / alpha_path(row.path)).read_bytes()
        assert written == png.getvalue(), row.path
        digest = hashlib.sha256((tmp_path / "raw" / row.path).read_bytes()).hexdigest()
        assert cache.path(digest).read_bytes() == written


class RecordingModel:
    """An onnxruntime session that records which outputs each run fetches."""

    def __init__(self, inner):
        self.inner, self.fetched = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, names, feed):
        self.fetched.append(names)
        return self.inner.run(names, feed)


def test_inference_fetches_only_u2nets_first_output(u2netp_session):
    inner = u2netp_session.inner_session
    assert len(inner.get_outputs()) == 7               # the saliency map and six side outputs
    model = RecordingModel(inner)
    tensor = u2net_input(Image.fromarray(skdata.astronaut()))
    pred = Batched(model, 1).predict(tensor)
    assert model.fetched == [[inner.get_outputs()[0].name]]
    assert np.array_equal(pred, inner.run(None, {inner.get_inputs()[0].name: tensor})[0][:, 0])
