"""``python -m napari_vdir`` runs the command line (see :mod:`napari_vdir.cli`)."""

from napari_vdir.cli import main

raise SystemExit(main())
