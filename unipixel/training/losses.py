"""Differentiable SAM 2 path for training and the reference's mask losses.

Inference (``UniPixelSAM2.track``) runs under ``inference_mode``; training needs gradients from the mask
losses into SAM 2, ``seg_head`` and the LLM. This module replays the same stock SAM 2 steps with autograd:
frame 0 is an initial conditioning frame (``no_mem_embed`` added, sparse prompt = the two not-a-point
tokens followed by the hidden tokens, ``no_mask_embed`` dense prompt, multimask output as configured), later frames are
memory-conditioned (stock ``_prepare_memory_conditioned_features``) with no prompt, and every frame's
chosen mask is encoded into memory (stock ``_encode_new_memory``) with the object pointer, as at inference.

Losses follow SAM 2's training recipe (``MultiStepMultiMasksAndIous``): per frame, focal (x20) + dice on
the 3 candidate masks (the best one, as SAM 2, averaged with the mean of all three, see
:func:`frame_losses`), L1 between predicted and actual IoU of every candidate, and a BCE on the
object-score logit; mask and IoU terms only where the object is present. An auxiliary classic SAM task
(a random click on the target, frame 0) shares the image features and the decoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from ..modeling.sam2 import UniPixelSAM2

SAM2_YAML = Path(__file__).with_name("sam2_shapes.yaml")
"""SAM 2 of the shapes model (stock format; one mask per prompt)."""
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT, OBJECT_WEIGHT = 20.0, 1.0, 1.0, 1.0


@dataclass
class FrameOutput:
    """SAM 2 heads on one frame for B objects: candidate low-res logits ``(B, M, h, w)`` (M = 3 or 1), predicted IoUs
    ``(B, M)`` and object-score logits ``(B, 1)``."""

    masks: torch.Tensor
    ious: torch.Tensor
    object_score: torch.Tensor


def sam_heads(
    sam2: UniPixelSAM2,
    pix_feat: torch.Tensor,
    high_res: list[torch.Tensor],
    hidden: torch.Tensor | None,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    init_frame: bool = True,
):
    """Prompt encoder + mask decoder; ``hidden`` ``(B, k, C)`` only on frame 0.

    Without ``points`` (coords ``(B, P, 2)``, labels ``(B, P)``) SAM 2 pads with one not-a-point, as at
    inference. Multimask output (three candidates) or one mask as stock SAM 2 decides for the frame
    (``init_frame``: a prompted frame) and the number of points, from the model's config."""
    batch = pix_feat.shape[0]
    multimask = sam2._use_multimask(init_frame, None if points is None else {"point_labels": points[1]})
    if points is None:
        device = pix_feat.device
        points = (torch.zeros(batch, 1, 2, device=device), -torch.ones(batch, 1, dtype=torch.int32, device=device))
    sparse, dense = sam2.sam_prompt_encoder(points=points, boxes=None, masks=None)
    if hidden is not None:
        sparse = torch.cat([sparse, hidden.to(sparse.dtype)], dim=1)
    masks, ious, tokens, object_score = sam2.sam_mask_decoder(
        image_embeddings=pix_feat,
        image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res,
    )
    return masks, ious, tokens, object_score


def track_for_training(
    sam2: UniPixelSAM2, frames: torch.Tensor, hidden: torch.Tensor, clicks: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[list[FrameOutput], FrameOutput | None]:
    """Segment B objects prompted by ``hidden`` ``(B, k, C)`` on frame 0 and track them over ``frames``
    ``(T, 3, S, S)`` with memory, differentiably. Returns one :class:`FrameOutput` per frame, and the
    classic SAM output of frame 0 for ``clicks`` (point prompts, see :func:`random_clicks`): an auxiliary
    task sharing the image features and the decoder that teaches them what an object is (``None``: no clicks)."""
    batch, num_frames = hidden.shape[0], frames.shape[0]
    clicked = None
    backbone = sam2.forward_image(frames)
    _, feats, pos, sizes = sam2._prepare_backbone_features(backbone)
    memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    for t in range(num_frames):
        cur = [f[:, t : t + 1].expand(-1, batch, -1) for f in feats]
        cur_pos = [p[:, t : t + 1].expand(-1, batch, -1) for p in pos]
        pix_feat = sam2._prepare_memory_conditioned_features(
            frame_idx=t, is_init_cond_frame=t == 0, current_vision_feats=cur[-1:],
            current_vision_pos_embeds=cur_pos[-1:], feat_sizes=sizes[-1:], output_dict=memory, num_frames=num_frames,
        )
        high_res = [x.permute(1, 2, 0).reshape(batch, x.shape[2], *s) for x, s in zip(cur[:-1], sizes[:-1])]
        masks, ious, tokens, object_score = sam_heads(sam2, pix_feat, high_res, hidden if t == 0 else None, init_frame=t == 0)
        outputs.append(FrameOutput(masks, ious, object_score))
        if t == 0 and clicks is not None:
            click_masks, click_ious, _, click_score = sam_heads(sam2, pix_feat, high_res, None, clicks)
            clicked = FrameOutput(click_masks, click_ious, click_score)
        if t == num_frames - 1:
            break
        # what inference keeps of this frame: the best-IoU mask (gated by the object score) and its pointer
        present = object_score > 0
        best = ious.argmax(dim=-1)
        rows = torch.arange(batch)
        chosen = torch.where(present[:, :, None, None], masks, NO_OBJ_SCORE)[rows, best][:, None]
        high_res_mask = F.interpolate(chosen, size=(sam2.image_size,) * 2, mode="bilinear", align_corners=False)
        pointer = sam2.obj_ptr_proj(tokens[rows, best])
        weight = present.float()
        pointer = weight * pointer + (1 - weight) * sam2.no_obj_ptr
        mem_features, mem_pos = sam2._encode_new_memory(cur, sizes, high_res_mask, object_score, is_mask_from_pts=False)
        kind = "cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"
        memory[kind][t] = {"maskmem_features": mem_features, "maskmem_pos_enc": mem_pos, "obj_ptr": pointer}
    return outputs, clicked


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: ``(..., P)`` -> ``(...)``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    return (ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss: ``(..., P)`` -> ``(...)``."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def frame_losses(out: FrameOutput, target: torch.Tensor, loss_size: int) -> dict[str, torch.Tensor]:
    """Losses of one frame for ``target`` ``(B, S, S)`` bool, compared at ``loss_size``² and averaged over
    objects. Candidates: the best one (min loss, as SAM 2) plus the mean of all three, since a shapes
    target is never ambiguous and an untrained candidate would otherwise stay junk and could win the
    predicted-IoU vote at inference."""
    gt = (F.interpolate(target[:, None].float(), size=(loss_size, loss_size), mode="area") > 0.5).flatten(1).float()
    logits = F.interpolate(out.masks, size=(loss_size, loss_size), mode="bilinear", align_corners=False).flatten(2)
    present = (gt.sum(-1) > 0).float()  # (B,)
    gt3 = gt[:, None].expand_as(logits)
    focal, dice = _focal(logits, gt3), _dice(logits, gt3)  # (B, 3)
    best = (FOCAL_WEIGHT * focal + DICE_WEIGHT * dice).argmin(dim=-1, keepdim=True)
    pick = lambda loss: 0.5 * (loss.gather(1, best)[:, 0] + loss.mean(-1))  # noqa: E731
    pred = (logits > 0).float()
    actual_iou = (pred * gt3).sum(-1) / ((pred + gt3) > 0).float().sum(-1).clamp(min=1)
    return {
        "focal": FOCAL_WEIGHT * (pick(focal) * present).mean(),
        "dice": DICE_WEIGHT * (pick(dice) * present).mean(),
        "iou": IOU_WEIGHT * ((out.ious - actual_iou).abs().mean(-1) * present).mean(),
        "object": OBJECT_WEIGHT * F.binary_cross_entropy_with_logits(out.object_score[:, 0], present),
    }


def mask_losses(outputs: list[FrameOutput], targets: torch.Tensor, loss_size: int) -> dict[str, torch.Tensor]:
    """:func:`frame_losses` summed over the frames of ``targets`` ``(B, T, S, S)``."""
    totals: dict[str, torch.Tensor] = {}
    for t, out in enumerate(outputs):
        for key, value in frame_losses(out, targets[:, t], loss_size).items():
            totals[key] = totals.get(key, 0) + value
    return totals


def random_clicks(targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random foreground pixel per object on frame 0 of ``targets`` ``(B, T, S, S)`` as a SAM 2 point
    prompt (label 1; label -1 padding for an object absent from frame 0)."""
    coords, labels = [], []
    for mask in targets[:, 0]:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            k = int(torch.randint(len(xs), (1,), generator=generator))
            coords.append([float(xs[k]), float(ys[k])])
            labels.append(1)
        else:
            coords.append([0.0, 0.0])
            labels.append(-1)
    return torch.tensor(coords)[:, None], torch.tensor(labels, dtype=torch.int32)[:, None]
