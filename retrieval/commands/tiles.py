"""`slidesearch tiles`: placeholder until the tiling module lands (owned by the slides/tiling work)."""
