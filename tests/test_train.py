"""Training: hand-computed targets and losses, the bundled synth models, a seeded resumable training run
of tiny models on a tiny synthetic dataset, and evaluation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcnviz.cli import main as cli
from dcnviz.data.classes import SYNTH_CLASSES, voc_palette
from dcnviz.data.synth import generate
from dcnviz.data.voc import VOCDataset
from dcnviz.errors import UserError
from dcnviz.eval.evaluate import evaluate
from dcnviz.models import get_spec, list_models, load_model
from dcnviz.models.anchors import generate_anchors
from dcnviz.models.boxes import decode
from dcnviz.models.registry import ModelSpec, register_model
from dcnviz.structures import Detections, Prep, Segmentation
from dcnviz.train import TrainConfig, loop, train
from dcnviz.train.losses import ohem_keep, rpn_losses, smooth_l1
from dcnviz.train.model import export_state, init_weights, is_offset_param, thaw_batchnorm
from dcnviz.train.targets import (AnchorTargetConfig, ProposalTargetConfig, anchor_targets, encode, overlaps,
                                  proposal_targets)
from torch_threads import threads

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------ targets
def test_overlaps_and_encode_by_hand():
    a = np.array([[0, 0, 9, 9]], float)
    b = np.array([[5, 5, 14, 14], [10, 10, 20, 20], [0, 0, 9, 9]], float)
    np.testing.assert_allclose(overlaps(a, b), [[25 / 175, 0.0, 1.0]])
    gt = np.array([[5, 0, 14, 19]], float)  # centre (9.5, 9.5), 10 x 20; box centre (4.5, 4.5), 10 x 10
    np.testing.assert_allclose(encode(a, gt), [[0.5, 0.5, 0.0, np.log(2.0)]])
    np.testing.assert_allclose(decode(a, encode(a, gt)), gt, atol=1e-12)


def test_anchor_targets_by_hand():
    anchors = generate_anchors(16, (1,), (1,))  # one 16x16 anchor, (0, 0, 15, 15)
    gt = np.array([[20, 0, 35, 15]], float)  # IoU 0.6 with the anchor at x=16, 1/7 with x=32, 0 elsewhere
    labels, targets, weights = anchor_targets(anchors, (2, 3), gt, (32, 48), RNG)
    assert labels.shape == (1, 2, 3) and targets.shape == weights.shape == (4, 2, 3)
    # the gt's best anchor is positive although 0.6 < 0.7; 1/7 and 0 are < 0.3: background
    np.testing.assert_array_equal(labels[0], [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(targets[:, 0, 1], [0.25, 0.0, 0.0, 0.0])  # centre 27.5 vs 23.5, width 16
    np.testing.assert_array_equal(weights[:, 0, 1], 1)
    assert weights.sum() == 4
    # an anchor crossing the image border is ignored
    labels, _, _ = anchor_targets(anchors, (2, 3), gt, (32, 40), RNG)
    assert labels[0, 0, 2] == -1 and labels[0, 1, 2] == -1 and labels[0, 0, 1] == 1


def test_anchor_targets_subsample_and_gt_without_overlap():
    anchors = generate_anchors(16, (1,), (1,))
    gt = np.array([[0, 0, 15, 15], [16, 0, 31, 15], [32, 0, 47, 15]], float)
    cfg = AnchorTargetConfig(batch_size=4, fg_fraction=0.5)
    labels, _, weights = anchor_targets(anchors, (2, 3), gt, (32, 48), np.random.default_rng(1), cfg)
    assert (labels == 1).sum() == 2 and (labels == 0).sum() == 2 and (labels == -1).sum() == 2
    assert weights.sum() == 4 * 2
    # a gt touching no anchor inside the image makes nothing positive (deviation from the official code)
    labels, _, _ = anchor_targets(anchors, (2, 3), np.array([[100, 100, 120, 120]], float), (200, 200), RNG)
    assert (labels == 1).sum() == 0 and (labels == 0).sum() == 6


def test_proposal_targets_by_hand():
    rois = np.array([[0, 0, 0, 9, 9],      # IoU 1 with gt 0: foreground
                     [0, 5, 0, 14, 9],     # IoU 50/150 = 1/3 with gt 0: background
                     [0, 40, 40, 49, 49],  # IoU 0: background
                     [0, 1, 0, 10, 9]],    # IoU 90/110 with gt 0: foreground
                    np.float32)
    gt = np.array([[0, 0, 9, 9]], float)
    out_rois, labels, targets, weights = proposal_targets(rois, gt, np.array([3]), RNG, ProposalTargetConfig())
    # 5 RoIs with the appended gt; at most round(0.25 * 5) = 1 foreground, then every background one
    assert len(out_rois) == 3 and labels.tolist() == [3, 0, 0]
    assert weights[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and weights[1:].sum() == 0
    fg = out_rois[0, 1:]
    assert tuple(fg) in {(0, 0, 9, 9), (1, 0, 10, 9)}
    np.testing.assert_allclose(targets[0, 4:], encode(fg[None], gt)[0] / [0.1, 0.1, 0.2, 0.2], rtol=1e-6)
    assert targets[0, :4].tolist() == [0, 0, 0, 0]
    # sampled mode, 4 RoIs: at most round(0.25 * 4) = 1 foreground, then the 2 background RoIs there are
    out_rois, labels, _, _ = proposal_targets(rois, gt, np.array([3]), RNG, ProposalTargetConfig(batch_rois=4))
    assert labels.tolist() == [3, 0, 0]
    # no gt: everything is background
    _, labels, _, weights = proposal_targets(rois, np.zeros((0, 4)), np.zeros(0, int), RNG)
    assert labels.tolist() == [0, 0, 0, 0] and weights.sum() == 0


# ------------------------------------------------------------------------------------------- losses
def test_smooth_l1_and_rpn_pairing_by_hand():
    x = torch.tensor([0.05, -1.0, 0.0])
    np.testing.assert_allclose(smooth_l1(x, 3.0).numpy(), [0.5 * 9 * 0.0025, 1 - 0.5 / 9, 0.0], rtol=1e-6)
    # A = 2 anchors on a 1x1 map: (bg, fg) pairs are channels (0, 2) and (1, 3)
    score = torch.tensor([1.0, 0.0, 3.0, 2.0]).reshape(1, 4, 1, 1)
    labels = torch.tensor([1, -1]).reshape(2, 1, 1)
    deltas = torch.tensor([0.5, 0, 0, 0, 1, 1, 1, 1.0]).reshape(1, 8, 1, 1)
    weights = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]).reshape(8, 1, 1)
    cls, box = rpn_losses(score, deltas, labels, torch.zeros(8, 1, 1), weights, batch_size=2)
    assert cls.item() == pytest.approx(-np.log(np.exp(3) / (np.exp(1) + np.exp(3))))
    assert box.item() == pytest.approx((0.5 - 0.5 / 9) / 2)


def test_ohem_keeps_the_hardest():
    cls_score = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1])  # losses: small, large, log 2
    zeros = torch.zeros(3, 8)
    assert ohem_keep(cls_score, zeros, labels, zeros, zeros, count=2).tolist() == [1, 2]


# ------------------------------------------------------------------------------------ synth models
def test_synth_twins_differ_only_in_deformable_parts():
    assert {"rfcn_dcn_synth", "rfcn_synth", "deeplab_dcn_synth", "deeplab_synth"} <= set(list_models())
    for dcn, plain in (("rfcn_dcn_synth", "rfcn_synth"), ("deeplab_dcn_synth", "deeplab_synth")):
        spec = get_spec(dcn)
        assert spec.bundled and spec.weights == f"{dcn}.safetensors" and spec.classes == SYNTH_CLASSES
        a, b = get_spec(dcn).factory(), get_spec(plain).factory()
        init_weights(a, 3)
        init_weights(b, 3)
        sa, sb = a.state_dict(), b.state_dict()
        extra = {k for k in sa if k not in sb}
        assert extra and all(is_offset_param(k) for k in extra) and set(sb) <= set(sa)
        for k in sb:
            assert torch.equal(sa[k], sb[k]), k
        assert all(not sa[k].any() for k in extra)  # offset layers start at zero
        layers = a.deformable_layers
        assert [l.name for l in layers] == ["res5a_branch2b", "res5b_branch2b", "res5c_branch2b"]
        assert sa["backbone.res5a.branch2b_offset.weight"].shape[0] == 18 and not b.deformable_layers


# --------------------------------------------------------------------------------- training run
def _tiny(task: str, dcn: bool):
    def factory():
        from dcnviz.models.deeplab import DeepLab
        from dcnviz.models.proposal import ProposalConfig
        from dcnviz.models.resnet import DeformableSpec, ResNetV1
        from dcnviz.models.rfcn import RFCN

        backbone = ResNetV1((1, 1, 1, 3), (4, 4, 8, 8), 8, deformable=DeformableSpec(1, 1) if dcn else None)
        if task == "segmentation":
            return DeepLab(backbone, SYNTH_CLASSES, voc_palette(6), (64, 96), head_mid=16)
        return RFCN(backbone, SYNTH_CLASSES, (64, 96), (1, 2, 4), (0.5, 1, 2), 3, deformable_psroi=dcn,
                    head_mid=16, rpn_mid=16, proposal=ProposalConfig(600, 50, 0.7, 0))
    return factory


for _task, _name in (("detection", "_test_rfcn_dcn_tiny"), ("segmentation", "_test_deeplab_dcn_tiny")):
    if _name not in list_models():
        register_model(ModelSpec(_name, _tiny(_task, True), _task, "synth", SYNTH_CLASSES, voc_palette(6),
                                 (64, 96), f"{_name}.safetensors", bundled=True))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, 3, seed=5, split="train")
    generate(root, 2, seed=6, split="test")
    return str(root)


def _config(model, data, **kw):
    base = dict(iterations=6, lr=0.002, warmup=2, steps=(4,), checkpoint_every=3, log_every=1, seed=1)
    return TrainConfig(model, data, **{**base, **kw})


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def one_thread():
    with threads(1):
        yield


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("model", ["_test_rfcn_dcn_tiny", "_test_deeplab_dcn_tiny"])
def test_training_loss_falls(model, data, tmp_path):
    out = str(tmp_path / "w.safetensors")
    train(_config(model, data, iterations=30, steps=(25,), lr=0.004, checkpoint_every=30, log_every=10), out,
          progress=False)
    losses = [r["loss"] for r in _records(out + ".log.jsonl") if "loss" in r]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    net = load_model(out)
    assert not net.training and get_spec(model).name == model
    result = net.predict(VOCDataset(data).image_path("test_000000"))
    assert isinstance(result, Detections if model.startswith("_test_rfcn") else Segmentation)


@pytest.mark.usefixtures("one_thread")
def test_interrupted_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    model = "_test_rfcn_dcn_tiny"
    straight = str(tmp_path / "straight.safetensors")
    train(_config(model, data), straight, progress=False)

    resumed = str(tmp_path / "resumed.safetensors")
    calls = {"n": 0}
    original = loop.detection_losses

    def interrupt_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "detection_losses", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_config(model, data), resumed, progress=False)
    with open(resumed + ".ckpt.json") as f:
        assert json.load(f)["iteration"] == 3
    with open(resumed + ".log.jsonl", "a") as f:
        f.write('{"iteration": 5, "lo')  # a record torn by the interruption
    monkeypatch.setattr(loop, "detection_losses", original)
    with pytest.raises(UserError, match="lr"):  # another run's checkpoint is refused
        train(_config(model, data, lr=0.004), resumed, progress=False)
    train(_config(model, data), resumed, progress=False)

    from safetensors.torch import load_file
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _records(straight + ".log.jsonl"), _records(resumed + ".log.jsonl")
    steps = lambda rs: [r for r in rs if "loss" in r]  # noqa: E731
    assert [r["iteration"] for r in steps(rb)] == list(range(1, 7))  # records after step 3 were trimmed
    assert [r["loss"] for r in steps(ra)] == [r["loss"] for r in steps(rb)]
    assert [r["iteration"] for r in rb if r.get("event") == "start"] == [0, 3]
    with pytest.raises(UserError, match="already exists"):
        train(_config(model, data), resumed, progress=False)


def test_export_folds_box_stds():
    model = thaw_batchnorm(_tiny("detection", False)())
    init_weights(model, 0)
    with torch.no_grad():
        model.head.rfcn_bbox.bias.normal_()
    state = export_state(model)
    stds = torch.tensor([0.1, 0.1, 0.2, 0.2] * 2).repeat_interleave(9)  # 3x3 parts, k-major channels
    w, b = model.head.rfcn_bbox.weight.detach(), model.head.rfcn_bbox.bias.detach()
    assert torch.equal(state["head.rfcn_bbox.weight"], w * stds[:, None, None, None])
    assert torch.equal(state["head.rfcn_bbox.bias"], b * stds)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert set(state) == set(_tiny("detection", False)().state_dict())


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_batch_losses_are_the_mean_of_the_images_losses(task, data):
    """Same-size images (no padding), BatchNorm at fixed statistics: a batch of two gives the mean of the
    two images' losses, i.e. RoIs keep their image's batch index and OHEM picks per image."""
    from dcnviz.data.loader import VOCDetSeg, collate
    from dcnviz.train.steps import detection_losses, segmentation_losses

    torch.manual_seed(0)
    model = thaw_batchnorm(_tiny(task, True)())
    init_weights(model, 3)
    with torch.no_grad():  # offsets and scores away from zero, so every path carries signal
        for name, p in model.named_parameters():
            if p.dim() == 4 and p.abs().max() == 0 and p.requires_grad:
                p.normal_(0, 0.01)
    ds = VOCDetSeg(data, "train", SYNTH_CLASSES, segmentation=task == "segmentation", short_side=64, max_size=96)
    items = [ds[k] for k in range(len(ds))]
    shape = items[0][0].shape
    items = [it for it in items if it[0].shape == shape][:2]
    assert len(items) == 2
    if task == "detection":
        step = lambda x, t, rng: detection_losses(model, x, t, rng)  # noqa: E731
    else:
        step = lambda x, t, rng: segmentation_losses(model, x, t)  # noqa: E731
    with torch.no_grad():
        batch = step(*collate(items), np.random.default_rng(5))
        rng = np.random.default_rng(5)  # one generator through both images, in batch order
        single = [step(*collate([it]), rng) for it in items]
    for key, value in batch.items():
        if task == "detection":
            expected = (single[0][key] + single[1][key]) / 2
        else:  # pixel-weighted: the batch averages over all labelled pixels
            counts = [int((it[1]["segmentation"] != 255).sum()) for it in items]
            expected = (single[0][key] * counts[0] + single[1][key] * counts[1]) / sum(counts)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_epoch_batches_cover_every_image_once_in_single_orientation_batches():
    portrait = np.array([False] * 11 + [True] * 6)
    sizes = set()
    for epoch in range(3):
        batches = loop.epoch_batches(7, epoch, portrait, 4)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(17))
        assert all(len(set(portrait[b].tolist())) == 1 and 1 <= len(b) <= 4 for b in batches)
        sizes.add(len(batches))
    assert sizes == {3 + 2}  # ceil(11/4) landscape + ceil(6/4) portrait batches every epoch
    assert [b.tolist() for b in loop.epoch_batches(7, 0, portrait, 4)] == [b.tolist() for b in
                                                                           loop.epoch_batches(7, 0, portrait, 4)]
    assert [b.tolist() for b in loop.epoch_batches(7, 0, portrait, 4)] != [b.tolist() for b in
                                                                           loop.epoch_batches(7, 1, portrait, 4)]


# ------------------------------------------------------------------------------------------ eval
class _Oracle:
    """Predicts the ground truth: boxes shifted by ``shift`` pixels, or the class map with void as 0. Its
    "preprocessing" passes the image on as its position among the annotations."""

    def __init__(self, task, root, shift=0.0):
        self.task, self.classes, self.voc, self.shift = task, SYNTH_CLASSES, VOCDataset(root), shift
        self.names = sorted(p.stem for p in (Path(root) / "Annotations").glob("*.xml"))

    def preprocess(self, path):
        return torch.tensor([self.names.index(path.stem)]), Prep((375, 500), 1.0, (375, 500))

    def predict_input(self, data, prep):
        image_id = self.names[int(data[0])]
        if self.task == "segmentation":
            labels = self.voc.segmentation(image_id).copy()
            labels[labels == 255] = 0
            return Segmentation(labels, SYNTH_CLASSES, voc_palette(6), prep)
        ann = self.voc.annotation(image_id)
        boxes = ann.boxes() + np.array([self.shift, 0, self.shift, 0], np.float32)
        labels = np.array([SYNTH_CLASSES.index(o.name) for o in ann.objects])
        return Detections(boxes, np.linspace(1, 0.5, len(boxes)).astype(np.float32), labels, SYNTH_CLASSES, prep)


def test_evaluate_on_oracles(data):
    exact = evaluate(_Oracle("detection", data), data, "test")
    present = {c for c, v in exact["AP50"].items() if v is not None}
    assert exact["task"] == "detection" and exact["images"] == 2 and present
    assert exact["mAP50"] == 1.0 and exact["mAP70"] == 1.0
    seg = evaluate(_Oracle("segmentation", data), data, "test")
    voc = VOCDataset(data)
    classes = set(np.concatenate([np.unique(voc.segmentation(i)) for i in voc.ids("test", "segmentation")])) - {255}
    assert seg["IoU"] == [1.0 if c in classes else 0.0 for c in range(6)]
    assert seg["mIoU"] == pytest.approx(len(classes) / 6)
    with pytest.raises(UserError, match="no such|does not exist"):
        evaluate(_Oracle("detection", data), data, "val")


def test_cli_train_and_eval(data, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-m", "_test_deeplab_dcn_tiny", "--data", data, "-o", tmp_path / "runs",
                              "--iterations", "2", "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs" / "_test_deeplab_dcn_tiny.safetensors"
    assert out.is_file() and Path(f"{out}.log.jsonl").is_file()
    res = runner.invoke(cli, ["eval", "-w", out, "--data", data, "--split", "test", "--json", "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("{")]
    scores = json.loads(line)
    assert json.loads((tmp_path / "ev" / "scores.json").read_text()) == scores
    assert scores["task"] == "segmentation" and len(scores["per_class"]) == 6 and 0 <= scores["mean"]["mIoU"] <= 1
    assert set(scores["per_class"][0]) == {"class", "IoU"}
    res = runner.invoke(cli, ["train", "-m", "rfcn_dcn_synth", "--data", str(tmp_path / "nowhere"),
                              "--output-file", str(tmp_path / "other.safetensors")])
    assert res.exit_code == 1 and "Traceback" not in res.output and "nowhere" in res.output
    res = runner.invoke(cli, ["eval", "-m", "no_such_model", "--data", data])
    assert res.exit_code == 2 and "unknown model" in res.output and "Usage:" not in res.output


def test_cli_train_and_eval_old_forms_still_work(data, tmp_path):
    """The forms of the previous release (positional MODEL, --out FILE) run, each with one deprecation line."""
    runner = CliRunner()
    out = tmp_path / "old.safetensors"
    res = runner.invoke(cli, ["train", "_test_deeplab_dcn_tiny", "--data", data, "--out", str(out), "--iterations",
                              "1", "--threads", "1", "--no-progress"])
    assert res.exit_code == 0 and out.is_file(), res.output
    assert sum(ln.startswith("Deprecated:") for ln in res.output.splitlines()) == 2
    res = runner.invoke(cli, ["eval", str(out), "--data", data, "-o", tmp_path / "ev", "-q"])
    assert res.exit_code == 0, res.output
    assert sum(ln.startswith("Deprecated:") for ln in res.output.splitlines()) == 1
