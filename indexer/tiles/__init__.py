"""Tissue and tiling: the tissue mask, the patch grid at a target magnification, the stain, and their overlay."""
