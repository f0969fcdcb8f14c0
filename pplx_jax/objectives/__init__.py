"""Training objectives (pure functions over global arrays)."""

from pplx_jax.objectives.diffusion import (
                                           DiffusionConfig,
                                           diffusion_loss,
                                           eval_at_mask_ratios,
                                           maskable_positions,
                                           masked_diffusion_loss,
                                           masked_diffusion_loss_from_logits,
                                           random_truncate,
                                           sample_noise,
)

__all__ = ["DiffusionConfig", "diffusion_loss", "eval_at_mask_ratios", "maskable_positions", "masked_diffusion_loss",
           "masked_diffusion_loss_from_logits", "random_truncate", "sample_noise"]
