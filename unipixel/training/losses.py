"""Differentiable SAM 2 path for training and the reference's mask losses.

Inference (``UniPixelSAM2.track``) runs under ``inference_mode``; training needs gradients from the mask
losses into SAM 2, ``seg_head`` and the LLM. This module replays the same stock SAM 2 steps with autograd:
frame 0 is an initial conditioning frame (``no_mem_embed`` added, sparse prompt = the two not-a-point
tokens followed by the hidden tokens, ``no_mask_embed`` dense prompt, multimask output), later frames are
memory-conditioned (stock ``_prepare_memory_conditioned_features``) with no prompt, and every frame's
chosen mask is encoded into memory (stock ``_encode_new_memory``) with the object pointer, as at inference.

Losses follow SAM 2's training recipe (``MultiStepMultiMasksAndIous``): per frame, focal (x20) + dice on
each of the 3 candidate masks with the minimum taken, L1 between predicted and actual IoU, and a BCE on
the object-score logit; mask and IoU terms only where the object is present.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from ..modeling.sam2 import UniPixelSAM2

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT, OBJECT_WEIGHT = 20.0, 1.0, 1.0, 1.0


@dataclass
class FrameOutput:
    """SAM 2 heads on one frame for B objects: candidate low-res logits ``(B, 3, h, w)``, predicted IoUs
    ``(B, 3)`` and object-score logits ``(B, 1)``."""

    masks: torch.Tensor
    ious: torch.Tensor
    object_score: torch.Tensor


def _heads(sam2: UniPixelSAM2, pix_feat: torch.Tensor, high_res: list[torch.Tensor], hidden: torch.Tensor | None):
    """Prompt encoder + mask decoder with multimask output; ``hidden`` ``(B, k, C)`` only on frame 0."""
    batch = pix_feat.shape[0]
    points = torch.zeros(batch, 1, 2, device=pix_feat.device)
    labels = -torch.ones(batch, 1, dtype=torch.int32, device=pix_feat.device)
    sparse, dense = sam2.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
    if hidden is not None:
        sparse = torch.cat([sparse, hidden.to(sparse.dtype)], dim=1)
    masks, ious, tokens, object_score = sam2.sam_mask_decoder(
        image_embeddings=pix_feat,
        image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
        repeat_image=False,
        high_res_features=high_res,
    )
    return masks, ious, tokens, object_score


def track_for_training(sam2: UniPixelSAM2, frames: torch.Tensor, hidden: torch.Tensor) -> list[FrameOutput]:
    """Segment B objects prompted by ``hidden`` ``(B, k, C)`` on frame 0 and track them over ``frames``
    ``(T, 3, S, S)`` with memory, differentiably. Returns one :class:`FrameOutput` per frame."""
    batch, num_frames = hidden.shape[0], frames.shape[0]
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
        masks, ious, tokens, object_score = _heads(sam2, pix_feat, high_res, hidden if t == 0 else None)
        outputs.append(FrameOutput(masks, ious, object_score))
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
    return outputs


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: ``(..., P)`` -> ``(...)``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return (loss * (alpha * target + (1 - alpha) * (1 - target))).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss: ``(..., P)`` -> ``(...)``."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def mask_losses(outputs: list[FrameOutput], targets: torch.Tensor, loss_size: int) -> dict[str, torch.Tensor]:
    """SAM 2 losses for ``targets`` ``(B, T, S, S)`` bool, compared at ``loss_size``² (summed over frames,
    averaged over objects). Returns focal, dice, iou and object terms (already weighted)."""
    totals = {"focal": 0.0, "dice": 0.0, "iou": 0.0, "object": 0.0}
    target_small = F.interpolate(targets.float(), size=(loss_size, loss_size), mode="area") > 0.5
    for t, out in enumerate(outputs):
        logits = F.interpolate(out.masks, size=(loss_size, loss_size), mode="bilinear", align_corners=False)
        gt = target_small[:, t].flatten(1).float()  # (B, P)
        present = (gt.sum(-1) > 0).float()  # (B,)
        flat = logits.flatten(2)  # (B, 3, P)
        focal = _focal(flat, gt[:, None].expand_as(flat))
        dice = _dice(flat, gt[:, None].expand_as(flat))
        combined = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
        best = combined.argmin(dim=-1, keepdim=True)
        pred = (flat > 0).float()
        inter = (pred * gt[:, None]).sum(-1)
        union = ((pred + gt[:, None]) > 0).float().sum(-1).clamp(min=1)
        actual_iou = inter / union
        iou_loss = F.l1_loss(out.ious, actual_iou, reduction="none").mean(-1)
        totals["focal"] = totals["focal"] + FOCAL_WEIGHT * (focal.gather(1, best)[:, 0] * present).mean()
        totals["dice"] = totals["dice"] + DICE_WEIGHT * (dice.gather(1, best)[:, 0] * present).mean()
        totals["iou"] = totals["iou"] + IOU_WEIGHT * (iou_loss * present).mean()
        object_loss = F.binary_cross_entropy_with_logits(out.object_score[:, 0], present)
        totals["object"] = totals["object"] + OBJECT_WEIGHT * object_loss
    return totals
