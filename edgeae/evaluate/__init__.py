"""Server-side evaluation, torch-free (numpy, Pillow, the runtime; matplotlib only inside plotting functions).

    metrics    PSNR, SSIM (Wang et al. 2004, checked against scikit-image), MS-SSIM (>= 176 px images)
    classical  JPEG / WebP quality sweeps and lossless PNG through Pillow, whole-file bytes
    bdrate     Bjøntegaard delta rate / PSNR (PCHIP or cubic) over the overlapping range; "no overlap" results
    rd         bundles through the real runtime (one payload per image, fp32 + int8) -> RD points, curves,
               BD-rates vs each classical codec, equal-quality comparisons (`edgeae eval`)
    report     report.md, rd.png, grid.png, rd.json (`edgeae eval --report DIR`)
    anomaly    reconstruction-error anomaly scores, percentile thresholds, ROC AUC (`edgeae score`)
"""
