"""Fidelity metrics against the baseline output: image (PSNR, SSIM, LPIPS) and audio."""
