"""Every figure of the library, rendered by one command: `python -m figures`.

Each module here draws one figure (or prints one table) and exposes

    NAME                      the name `--only NAME` selects
    render(out_dir, full=False) -> dict of summary numbers

Figures hold no math of their own: they only call `scratch/` and `ports/`, and plot what
those return. Every random draw comes from a seeded `np.random.Generator`, so two runs give
the same pictures and the same numbers.
"""

import matplotlib

matplotlib.use("Agg")  # render to files only, never open a window

DPI = 130  # sharp enough for a slide, small enough for a README gallery


def save(fig, out_dir, filename):
    """Write `fig` as `out_dir/filename` (PNG), close it, and return the path written."""
    import os

    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
