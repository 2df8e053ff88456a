"""Evaluation: reconstruction metrics (PSNR, SSIM) and pictures (comparison videos, PNG strips)."""
