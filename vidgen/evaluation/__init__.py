"""Evaluation: reconstruction metrics (PSNR, SSIM), pictures (comparison videos, PNG strips),
and the synthetic-world grader (world_grader, world_segment) for prompt adherence."""
