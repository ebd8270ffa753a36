"""`slidesearch tiles`: show a slide's facts and how many patches tiling keeps (optionally a check image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.cli_app import app, guarded, print_json


@app.command()
@guarded
def tiles(
    slide: str = typer.Argument(..., help="Slide file (SVS, NDPI, MRXS, tiled TIFF …), DICOM-WSI folder, plain image, "
                                "or DICOMweb series (dicomweb+http(s)://…/studies/UID/series/UID)."),
    mag: float = typer.Option(20.0, "--mag", min=0.1, help="Target magnification (10 / microns per pixel)."),
    patch: int = typer.Option(224, "--patch", min=8, help="Patch side in pixels at the target magnification."),
    mpp: Optional[float] = typer.Option(
        None, "--mpp", min=0.01, help="Microns per pixel at level 0; overrides the slide's metadata."
    ),
    min_tissue: float = typer.Option(
        0.5, "--min-tissue", min=0.0, max=1.0, help="Minimum tissue fraction for a patch to be kept."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    thumbnail: Optional[Path] = typer.Option(
        None, "--thumbnail", help="Write a PNG with the tissue outline and patch grid to this path."
    ),
) -> None:
    """Open SLIDE, detect tissue and count the patches kept at the given magnification."""
    from indexer.errors import SlideError
    from indexer.slides import open_slide
    from indexer.tiles.tiling import TilingConfig, tile_slide
    from indexer.tiles.tissue import detect_tissue

    config = TilingConfig(magnification=mag, patch_px=patch, min_tissue=min_tissue)
    with open_slide(slide, mpp=mpp) as opened:
        try:
            mask = detect_tissue(opened)
            grid = tile_slide(opened, config, mask=mask)
            if thumbnail is not None:
                from indexer.tiles.overlay import render_tiling_thumbnail

                render_tiling_thumbnail(opened, grid, mask, thumbnail)
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise SlideError(f"{slide}: cannot tile: {str(exc).strip() or type(exc).__name__}") from None
        result: dict[str, Any] = {
            **opened.facts(),
            "tiling": {"magnification": mag, "patch_px": patch, "min_tissue": min_tissue,
                       "patch_size_level0": grid.size, "read_level": grid.level, "read_px": grid.read_px},
            "tissue_fraction": round(mask.tissue_fraction, 4),
            "patches": len(grid),
            "thumbnail": str(thumbnail) if thumbnail is not None else None,
        }
    if len(grid) == 0:
        typer.echo(f"warning: no tissue patches in {slide} at {mag:g}x (min tissue {min_tissue:g}); 0 patches",
                   err=True)
    if as_json:
        print_json(result)
    else:
        _print_table(result)


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=Path(result["path"]).name, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    tiling = result["tiling"]
    rows = [
        ("vendor", result["vendor"]),
        ("levels", f"{result['levels']}  dims {result['dimensions']}  downsamples {result['downsamples']}"),
        ("mpp", f"{result['mpp']} ({result['mpp_source']})"),
        ("objective power", result["objective_power"]),
        ("magnification", result["magnification"]),
        ("tissue fraction", result["tissue_fraction"]),
        ("patch grid", f"{tiling['patch_px']} px at {tiling['magnification']:g}x = {tiling['patch_size_level0']} "
                       f"level-0 px, read {tiling['read_px']} px at level {tiling['read_level']}"),
        ("patches", result["patches"]),
    ]
    if result["thumbnail"]:
        rows.append(("thumbnail", result["thumbnail"]))
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)
