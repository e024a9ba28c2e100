"""UniPixel inference: Qwen2.5-VL + SAM 2, pixel-grounded answers about images and videos."""
