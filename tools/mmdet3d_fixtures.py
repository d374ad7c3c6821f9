"""Write the OpenMMLab parity fixture with the REAL mmdet3d forward (run by make_mmdet3d_fixtures.sh).

Runs in the side venv (mmcv 2.1 / mmdet 3.3 / mmdet3d 1.4); imports nothing of x3kd, so the
reference numbers cannot be shaped by the code they check. It builds mmdet3d's own
CenterPoint-pillar nuScenes model config (configs/_base_/models/centerpoint_pillar02_second_secfpn_nus.py
as installed with mmdet3d), shrunk to CI size (channels, a +-25.6 m range, 0.4 m pillars, 6 points
per pillar, 4000 pillars), with seeded random weights and random BatchNorm statistics, and runs:

  data_preprocessor voxelisation -> extract_pts_feat (PFN, scatter, SECOND, SECONDFPN)
  -> CenterHead forward -> bbox_coder.decode per task -> predict_by_feat (circle and rotate NMS)

Saved to <out>/centerpoint_pillar_tiny.pt (tensors, numbers, strings only: loads with
weights_only=True): the state dict (mmdet3d key names), the two input clouds, mmdet3d's hard
voxels, the neck output, every task's head maps, the decoded boxes per task before NMS and the
final predictions for both NMS types, plus the config and versions used.

It also writes <out>/maskrcnn_tiny.pt from mmdet's Mask R-CNN: mmdet3d's own
configs/_base_/models/mask-rcnn_r50_fpn.py with the nuImages class list of
configs/_base_/datasets/nuim-instance.py, shrunk to CI size (ResNet-18 at base width 8, 16-channel
FPN, slim heads, anchor scale 2, 100 proposals), seeded random weights, run by mmdet's DetDataPreprocessor ->
extract_feat -> rpn_head.predict -> roi_head.predict on one 56 x 120 RGB image (padded to 64 x 128,
no resize). Saved: the state dict, the image, the FPN levels, the RPN proposals, and the final
boxes / scores / labels with binary (0.5) and 8-bit soft masks.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

SMALL = dict(
    point_cloud_range=[-25.6, -25.6, -5.0, 25.6, 25.6, 3.0],
    voxel_size=[0.4, 0.4, 8.0],
    max_num_points=6,
    max_voxels=(3000, 4000),
    pfn=[8],
    backbone=[8, 8, 16],
    layer_nums=[1, 1, 1],
    neck=[8, 8, 8],
    share=8,
    head_conv=8,
)


def base_model_config() -> dict:
    """mmdet3d's own base config for CenterPoint-pillar on nuScenes, as installed."""
    import mmdet3d
    from mmengine.config import Config

    path = Path(mmdet3d.__file__).parent / ".mim" / "configs" / "_base_" / "models" / "centerpoint_pillar02_second_secfpn_nus.py"
    if not path.is_file():
        raise SystemExit(f"mmdet3d's config {path} is not installed (mmdet3d installed without its .mim configs?)")
    return Config.fromfile(str(path)).to_dict()["model"], str(path)


def small_config(model: dict) -> dict:
    """The base config with CI-size channels / range; structure and every other setting unchanged."""
    m = copy.deepcopy(model)
    s = SMALL
    pcr, vs = s["point_cloud_range"], s["voxel_size"]
    grid = [int(round((pcr[3] - pcr[0]) / vs[0])), int(round((pcr[4] - pcr[1]) / vs[1]))]
    m["data_preprocessor"]["voxel_layer"].update(point_cloud_range=pcr, voxel_size=vs,
                                                 max_num_points=s["max_num_points"], max_voxels=s["max_voxels"])
    m["pts_voxel_encoder"].update(feat_channels=s["pfn"], voxel_size=tuple(vs), point_cloud_range=pcr)
    m["pts_middle_encoder"].update(in_channels=s["pfn"][-1], output_shape=(grid[1], grid[0]))
    m["pts_backbone"].update(in_channels=s["pfn"][-1], out_channels=s["backbone"], layer_nums=s["layer_nums"])
    m["pts_neck"].update(in_channels=s["backbone"], out_channels=s["neck"])
    head = m["pts_bbox_head"]
    head.update(in_channels=sum(s["neck"]), share_conv_channel=s["share"])
    head["separate_head"]["head_conv"] = s["head_conv"]
    head["bbox_coder"].update(pc_range=pcr[:2], voxel_size=vs[:2])
    m["train_cfg"]["pts"].update(grid_size=[grid[0], grid[1], 1], voxel_size=vs, point_cloud_range=pcr)
    m["test_cfg"]["pts"].update(pc_range=pcr[:2], voxel_size=vs[:2])
    return m


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights everywhere, BatchNorm statistics included (so no layer is an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith(("norm.weight", "bn.weight")) or (t.ndim == 1 and "weight" in name):
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
            elif "heatmap.1.bias" in name:
                t.copy_(-2.4 + 0.3 * torch.randn(t.shape, generator=g))  # some peaks above 0.1, not all
            else:
                fan_in = max(1, t[0].numel()) if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / np.sqrt(fan_in) * (1.0 if t.ndim > 1 else 0.2))
                if re.fullmatch(r".*task_heads\.\d+\.\w+\.1\.weight", name):
                    # CenterHead's output convs: unscaled, the heatmap logits saturate (scores of
                    # exactly 1.0 tie, and which of a tie NMS keeps is arbitrary) and exp(dim) is huge.
                    t.mul_(0.15)


def make_points(seed: int, n: int) -> torch.Tensor:
    """A cloud with out-of-range points, crowded pillars (> max_num_points) and sparse ones."""
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([28.0, 28.0, 3.0])
    crowd = n // 4
    xyz[:crowd, :2] = torch.round(xyz[:crowd, :2] / 3) * 3 + 0.3 * torch.rand(crowd, 2, generator=g)
    feats = torch.cat([torch.rand(n, 1, generator=g) * 255, torch.rand(n, 1, generator=g) * 0.45], dim=1)
    return torch.cat([xyz, feats], dim=1).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--what", nargs="+", choices=("centerpoint", "maskrcnn"), default=["centerpoint", "maskrcnn"])
    args = parser.parse_args()
    if "centerpoint" in args.what:
        centerpoint_fixture(args)
    if "maskrcnn" in args.what:
        maskrcnn_fixture(args)


def centerpoint_fixture(args: argparse.Namespace) -> None:

    import mmcv
    import mmdet
    import mmdet3d
    import mmengine
    import mmdet.models  # noqa: F401 - fills the mmdet.* registry entries the config names (losses)
    import mmdet3d.models  # noqa: F401 - CenterPoint and its parts
    from mmdet3d.registry import MODELS
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope

    # Only the model packages are imported (not register_all_modules): mmdet3d's dataset and metric
    # modules pull in dataset SDKs (lyft, waymo) that building a model does not need.
    init_default_scope("mmdet3d")
    base, config_path = base_model_config()
    cfg = small_config(base)
    torch.manual_seed(args.seed)
    model = MODELS.build(ConfigDict(cfg))  # the detectors read their config by attribute (cfg.x.y)
    model.init_weights()
    randomise(model, args.seed)
    model.eval()

    points = [make_points(args.seed + 1, 9000), make_points(args.seed + 2, 2500)]  # 1st: > 4000 pillars
    samples = [Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes)) for _ in points]
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": {"points": [p.clone() for p in points]}, "data_samples": samples},
                                       training=False)
        voxel_dict = data["inputs"]["voxels"]
        neck = model.extract_pts_feat(voxel_dict, points=data["inputs"]["points"], batch_input_metas=metas)
        head = model.pts_bbox_head
        preds = head(neck)
        task_maps = [{k: v for k, v in task[0].items()} for task in preds]
        decoded = []
        for t, task in enumerate(preds):
            d = task[0]
            dec = head.bbox_coder.decode(d["heatmap"].sigmoid(), d["rot"][:, 0:1], d["rot"][:, 1:2], d["height"],
                                         torch.exp(d["dim"]), d["vel"], reg=d["reg"], task_id=t)
            decoded.append([{k: v.clone() for k, v in det.items()} for det in dec])
        final = {}
        for nms in ("circle", "rotate"):
            head.test_cfg["nms_type"] = nms
            results = head.predict_by_feat(preds, metas)
            final[nms] = [{"bboxes_3d": r.bboxes_3d.tensor.clone(), "scores_3d": r.scores_3d.clone(),
                           "labels_3d": r.labels_3d.long().clone()} for r in results]

    fixture = {
        "description": "mmdet3d CenterPoint-pillar (nuScenes base config, CI-size channels) forward on two clouds",
        "versions": {"mmdet3d": mmdet3d.__version__, "mmdet": mmdet.__version__, "mmcv": mmcv.__version__,
                     "mmengine": mmengine.__version__, "torch": str(torch.__version__)},
        "config_file": os.path.relpath(config_path, Path(mmdet3d.__file__).parent),
        "model_config": json.dumps(cfg, default=str),
        "small": json.dumps(SMALL),
        "seed": args.seed,
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "points": points,
        "voxels": {"voxels": voxel_dict["voxels"], "coors": voxel_dict["coors"], "num_points": voxel_dict["num_points"]},
        "neck": neck[0],
        "task_maps": task_maps,
        "decoded": decoded,
        "final": final,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out / "centerpoint_pillar_tiny.pt")
    n_final = {k: [int(r["scores_3d"].numel()) for r in v] for k, v in final.items()}
    print(json.dumps({"written": str(out / "centerpoint_pillar_tiny.pt"), "voxels": int(voxel_dict["coors"].shape[0]),
                      "neck": list(neck[0].shape), "final_boxes": n_final, "versions": fixture["versions"]}))


MASKRCNN_SMALL = dict(depth=18, base_channels=8, fpn=16, fc=32, mask_convs=2, mask_channels=16,
                      anchor_scale=2, proposals=100, max_per_img=20, image_hw=(56, 120))

#: mmdet's ImageNet normalisation of the nuImages configs (RGB order).
IMG_MEAN, IMG_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def maskrcnn_model_config() -> tuple[dict, tuple[str, ...], str]:
    """mmdet3d's Mask R-CNN base model config and the nuImages class names, as installed."""
    import mmdet3d
    from mmengine.config import Config

    root = Path(mmdet3d.__file__).parent / ".mim" / "configs" / "_base_"
    model_path, data_path = root / "models" / "mask-rcnn_r50_fpn.py", root / "datasets" / "nuim-instance.py"
    for path in (model_path, data_path):
        if not path.is_file():
            raise SystemExit(f"mmdet3d's config {path} is not installed (mmdet3d installed without its .mim configs?)")
    model = Config.fromfile(str(model_path)).to_dict()["model"]
    classes = tuple(Config.fromfile(str(data_path)).to_dict()["class_names"])
    return model, classes, str(model_path)


def small_maskrcnn_config(model: dict, num_classes: int) -> dict:
    """The base config at CI size; every structural setting (heads, coders, RoIAlign, NMS) unchanged."""
    m = copy.deepcopy(model)
    s = MASKRCNN_SMALL
    m.pop("pretrained", None)  # no download: weights are random here
    m.pop("_scope_", None)
    m["data_preprocessor"] = dict(type="DetDataPreprocessor", mean=IMG_MEAN, std=IMG_STD, bgr_to_rgb=False,
                                  pad_size_divisor=32)
    m["backbone"].update(depth=s["depth"], base_channels=s["base_channels"], stem_channels=s["base_channels"],
                         init_cfg=None)
    m["neck"].update(in_channels=[s["base_channels"] * 2**k for k in range(4)], out_channels=s["fpn"])  # BasicBlock stages
    rpn = m["rpn_head"]
    rpn.update(in_channels=s["fpn"], feat_channels=s["fpn"])
    rpn["anchor_generator"]["scales"] = [s["anchor_scale"]]
    roi = m["roi_head"]
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        roi[extractor]["out_channels"] = s["fpn"]
    roi["bbox_head"].update(in_channels=s["fpn"], fc_out_channels=s["fc"], num_classes=num_classes)
    roi["mask_head"].update(in_channels=s["fpn"], conv_out_channels=s["mask_channels"], num_convs=s["mask_convs"],
                            num_classes=num_classes)
    for key in ("rpn", "rpn_proposal"):
        if key in m["test_cfg"]:
            m["test_cfg"][key].update(nms_pre=s["proposals"], max_per_img=s["proposals"])
    m["test_cfg"]["rcnn"]["max_per_img"] = s["max_per_img"]
    return m


def make_image(seed: int, hw: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB: noise with a few flat rectangles (so features have edges to respond to)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    img = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    for _ in range(6):
        y0, x0 = int(torch.randint(0, h - 8, (1,), generator=g)), int(torch.randint(0, w - 8, (1,), generator=g))
        dy, dx = int(torch.randint(6, h // 2, (1,), generator=g)), int(torch.randint(6, w // 3, (1,), generator=g))
        img[y0:y0 + dy, x0:x0 + dx] = torch.randint(0, 256, (3,), generator=g, dtype=torch.uint8)
    return img


def maskrcnn_fixture(args: argparse.Namespace) -> None:
    import mmcv
    import mmdet
    import mmengine
    import mmdet.models  # noqa: F401 - MaskRCNN and its parts
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    base, classes, config_path = maskrcnn_model_config()
    cfg = small_maskrcnn_config(base, len(classes))
    torch.manual_seed(args.seed)
    model = MODELS.build(ConfigDict(cfg))  # the detectors read their config by attribute (cfg.x.y)
    model.init_weights()
    randomise(model, args.seed)
    model.eval()

    h, w = MASKRCNN_SMALL["image_hw"]
    image = make_image(args.seed + 3, (h, w))
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [image.permute(2, 0, 1).contiguous()],
                                        "data_samples": [DetDataSample(metainfo=dict(meta))]}, False)
        inputs, samples = data["inputs"], data["data_samples"]
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
        outputs = {}
        for name, thr in (("binary", 0.5), ("soft_u8", -1.0)):
            model.roi_head.test_cfg["mask_thr_binary"] = thr
            (res,) = model.roi_head.predict(feats, copy.deepcopy(proposals), samples, rescale=True)
            outputs[name] = {"bboxes": res.bboxes.clone(), "scores": res.scores.clone(),
                             "labels": res.labels.long().clone(), "masks": res.masks.clone()}
    fixture = {
        "description": "mmdet Mask R-CNN (mmdet3d's nuImages base config, CI-size channels) forward on one image",
        "versions": {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                     "torch": str(torch.__version__)},
        "config_file": config_path.split(".mim/")[-1],
        "model_config": json.dumps(cfg, default=str),
        "class_names": list(classes),
        "test_scale": [w, h],  # (long, short): this image is tested at its own size
        "small": json.dumps(MASKRCNN_SMALL),
        "seed": args.seed,
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "image_rgb_u8": image,
        "batch_input": inputs.clone(),
        "fpn": [f.clone() for f in feats],
        "proposals": {"bboxes": proposals[0].bboxes.clone(), "scores": proposals[0].scores.clone()},
        "final": outputs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out / "maskrcnn_tiny.pt")
    print(json.dumps({"written": str(out / "maskrcnn_tiny.pt"), "proposals": int(proposals[0].bboxes.shape[0]),
                      "detections": int(outputs["binary"]["bboxes"].shape[0]), "versions": fixture["versions"]}))


if __name__ == "__main__":
    main()
