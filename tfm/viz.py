"""Figures and 3D views of results: PyVista scenes (offscreen PNG or an interactive window)
and matplotlib slices. Imported lazily; the numerical core never imports it.

Axis conventions: arrays are (Z, Y, X) with vectors (v_z, v_y, v_x); PyVista runs x
fastest and wants (x, y, z) vectors, which :func:`tfm.io.to_pyvista` converts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import atomic_path, to_pyvista
from .result import Result


def _pv(offscreen: bool):
    if offscreen:  # EGL renders without an X server (Mesa); silences "bad X server connection"
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    if offscreen:
        pv.OFF_SCREEN = True
    return pv


def _image(grid, volume, name):
    import pyvista as pv

    img = pv.ImageData(dimensions=grid.shape[::-1], spacing=grid.spacing_um[::-1], origin=grid.origin_um[::-1])
    img.point_data[name] = np.ascontiguousarray(np.asarray(volume, np.float32).ravel())
    return img


def _top_points(img, name: str, count: int):
    """The ``count`` points of largest ``|name|`` (arrows for the strongest vectors only)."""
    mag = np.linalg.norm(np.asarray(img.point_data[name]), axis=1)
    if mag.max() <= 0:
        return None
    keep = np.argsort(mag)[::-1][: min(count, int(np.sum(mag > 0)))]
    import pyvista as pv

    pts = pv.PolyData(np.asarray(img.points)[keep])
    pts.point_data[name] = np.asarray(img.point_data[name])[keep]
    pts.point_data["magnitude"] = mag[keep]
    return pts


def _volume_image(vol, result: Result, name: str):
    """A scalar volume as a PyVista image: on the result's grid, or ``(volume, spacing_um)``
    as an image whose first voxel is at 0 µm."""
    from .grid import Grid

    if isinstance(vol, tuple):
        v, spacing = vol
        return _image(Grid(np.shape(v), spacing), v, name)
    if np.shape(vol) != result.grid.shape:
        raise ValueError(f"{name} volume {np.shape(vol)} is not on the result's grid {result.grid.shape}; "
                         f"pass ({name}_volume, spacing_um) for an image volume")
    return _image(result.grid, vol, name)


def scene(result: Result, cell=None, beads=None, cell_level: float | None = None, arrows: int = 400,
          glyphs: int = 600, offscreen: bool = True, window_size=(900, 700)):
    """A PyVista plotter showing ``result`` in 3D.

    Args:
      cell: optional cell volume (e.g. the cell channel or a mask / volume fraction): on the
        result's grid, or an image volume ``(volume, spacing_um)`` whose first voxel lies at
        0 µm (the image the result was measured on; DVC result grids start at the first
        window centre, not at 0): drawn as an isosurface at ``cell_level`` (default: half
        its maximum).
      beads: optional bead image ``(volume, spacing_um)`` (first voxel at 0 µm): its mid-z
        plane is drawn translucent under the field.
      arrows: number of force arrows (the strongest), coloured by |f| (pN/µm³).
      glyphs: number of displacement glyphs (the largest), grey.
    """
    pv = _pv(offscreen)
    img = to_pyvista(result)
    pl = pv.Plotter(off_screen=offscreen, window_size=list(window_size))
    pl.set_background("white")
    pl.add_mesh(img.outline(), color="black")
    extent = np.asarray(result.grid.extent_um)
    scale_len = 0.08 * float(extent.max())
    focus = []
    if cell is not None:
        vol = cell[0] if isinstance(cell, tuple) else cell
        cimg = _volume_image(cell, result, "cell")
        level = 0.5 * float(np.max(vol)) if cell_level is None else cell_level
        surf = cimg.contour([level], scalars="cell")
        if surf.n_points:
            pl.add_mesh(surf, color="#4caf50", opacity=0.55, smooth_shading=True)
            focus.append(surf)
    if beads is not None:
        sl = _volume_image(beads, result, "beads").slice(normal="z")
        pl.add_mesh(sl, cmap="gray", opacity=0.35, show_scalar_bar=False)
    if result.displacement is not None and glyphs:
        pts = _top_points(img, "displacement_um", glyphs)
        if pts is not None:
            factor = scale_len / float(pts.point_data["magnitude"].max())
            pl.add_mesh(pts.glyph(orient="displacement_um", scale="magnitude", factor=factor), color="#777777", opacity=0.6)
    if result.force is not None and arrows:
        pts = _top_points(img, "force_pN_per_um3", arrows)
        if pts is not None:
            factor = 1.5 * scale_len / float(pts.point_data["magnitude"].max())
            focus.append(pts)
            pl.add_mesh(pts.glyph(orient="force_pN_per_um3", scale="magnitude", factor=factor), scalars="magnitude",
                        cmap="inferno", scalar_bar_args={"title": "|f| pN/µm³", "color": "black"})
    pl.add_axes(color="black")
    pl.camera_position = "iso"
    if focus:  # frame the cell and the strongest forces, not the whole box
        b = np.array([m.bounds for m in focus]).reshape(-1, 3, 2)
        lo, hi = b[:, :, 0].min(0), b[:, :, 1].max(0)
        c, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.6, 0.1 * extent.max())
        pl.reset_camera(bounds=np.ravel(np.stack([c - half, c + half], -1)).tolist())
    return pl


def render_png(result: Result, path, **kwargs) -> Path:
    """Render :func:`scene` offscreen into a PNG (written atomically)."""
    path = Path(path)
    pl = scene(result, offscreen=True, **kwargs)
    with atomic_path(path) as tmp:  # keeps the suffix, so VTK writes PNG
        pl.screenshot(str(tmp))
    pl.close()
    return path


def show(result: Result, **kwargs) -> None:
    """Open an interactive window (needs a display)."""
    pl = scene(result, offscreen=False, **kwargs)
    pl.show()


def slices_figure(result: Result, path, z_index: int | None = None) -> Path:
    """|u| and |f| on one z-plane (default: the middle), side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = result.grid
    z = g.shape[0] // 2 if z_index is None else int(z_index)
    fields = [(n, a, u) for n, a, u in (("|u|", result.displacement, "µm"), ("|f|", result.force, "pN/µm³")) if a is not None]
    fig, ax = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4.2), squeeze=False)
    ext = [g.origin_um[2], g.origin_um[2] + (g.shape[2] - 1) * g.spacing_um[2],
           g.origin_um[1] + (g.shape[1] - 1) * g.spacing_um[1], g.origin_um[1]]
    for a, (name, arr, unit) in zip(ax[0], fields):
        im = a.imshow(np.linalg.norm(arr[z], axis=-1), extent=ext)
        a.set_title(f"{name}, {unit} (z = {g.origin_um[0] + z * g.spacing_um[0]:.1f} µm)")
        a.set_xlabel("x, µm")
        a.set_ylabel("y, µm")
        fig.colorbar(im, ax=a, shrink=0.85)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
