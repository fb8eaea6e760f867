"""OME-Zarr (OME-NGFF 0.4 and 0.5): a streaming writer with a multiscale pyramid and NGFF
labels, and the reader-side helpers that validation and verification use.

Specifications, cited by their section anchors: OME-NGFF 0.4
(https://ngff.openmicroscopy.org/0.4/) and 0.5 (https://ngff.openmicroscopy.org/0.5/);
Zarr v2 (https://zarr-specs.readthedocs.io/en/latest/v2/v2.0.html); Zarr v3 core and its
``sharding_indexed`` codec v1.0
(https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/).

Layout of an image written here (3D grayscale, axes ``z, y, x``):

- **0.5** (default): Zarr v3. The root ``zarr.json`` is a group whose ``attributes.ome``
  holds ``version`` "0.5" (0.5 #metadata), ``multiscales`` (#multiscale-md) and, for
  intensity images, ``omero`` (#omero-md). Level *i* is the array ``<i>/zarr.json``
  whose ``dimension_names`` are the axis names, as 0.5 #axes-md requires. Chunks of
  (1, 256, 256) pixels are stored in shards of at most 2048 x 2048 pixels in y/x, deep
  enough to hold :attr:`NgffV05.shard_bytes` (256 MiB) of pixels, clipped to the array:
  a 4.3 GB stack of 2048 x 2048 planes gives 22 shard files. Shard files are
  ``<i>/c/<z>/<y>/<x>``, index at the end, CRC32C-checked.
- **0.4**: Zarr v2. ``.zgroup`` and ``.zattrs`` (``multiscales`` with ``version`` "0.4",
  ``omero``) at the root; level *i* is ``<i>/.zarray``; one file per chunk of
  (8, 256, 256) pixels in the nested layout ``<i>/<z>/<y>/<x>`` (``dimension_separator``
  "/", 0.4 #on-disk).
- Axes (#axes-md): ``z``, ``y``, ``x``, type ``space``, unit ``micrometer``. Each level
  has a ``scale`` (#trafo-md, #multiscale-md) with its voxel size in micrometres (it
  doubles on each halved axis) and, where needed, a ``translation`` (after the scale,
  as required): the source's origin (OME-XML ``Plane`` positions in a length unit, or
  one given), plus half a block minus half a level-0 voxel on mean-downsampled levels,
  so that voxel centres stay in place. Nearest (first-voxel) levels need no shift.
- NGFF labels (#labels-md): ``labels/<name>`` of an intensity image, each a multiscale
  image with the image's levels, shapes and origin, nearest-downsampled, with
  ``image-label`` ``colors`` and ``source``.
- Pixels are little-endian; chunks are Blosc-compressed (:data:`BLOSC`: zstd level 1,
  byte shuffle); edge chunks are padded with the fill value 0. JSON has sorted keys, and
  there is no timestamp or UUID: the same input gives byte-identical files, whatever the
  number of workers or the scheduler.

The pyramid (:func:`pyramid_shapes`): each level halves y and x (rounding up; an odd
last row or column is repeated) and also z once the voxel is close to isotropic (z
voxel size at most :data:`Z_ISOTROPY` times the y/x size), until y and x fit in one
chunk. Intensity images take the mean of each 2x2 (or 2x2x2) block, integers rounded
half up (as :func:`bidspack.io.ometiff.downsample2d`); label images take each block's
first voxel (top-left of its first plane), so labels never take new values. The
multiscale ``type`` is ``"mean"`` or ``"nearest"``.

Memory and parallelism: the source is read once, in Z order, and hashed
(:class:`~bidspack.io.pixelhash.PixelHasher`). Each *step* reads a window of about
:data:`STEP_TASKS` x workers x :data:`TASK_BYTES` of level-0 pixels and runs, as Dask
tasks, the encoding of every level's ready planes together with the computation of the
next level from them (in row bands when a plane is large); the driver then appends the
encoded chunks to their files in (z, y, x) order. Level *k+1* of a window is handled in
the step after level *k* (a pipeline), so only a few windows of planes are held, whatever
the stack depth: memory grows with plane size x chunk depth x workers, not with the
number of planes. With ``dask.distributed`` the tasks run on the cluster's workers,
while the driver reads, hashes and writes (one writer per shard file).
Modules: :mod:`~bidspack.io.omezarr.versions` (NGFF versions as classes),
:mod:`~bidspack.io.omezarr.store` (chunk and shard files),
:mod:`~bidspack.io.omezarr.pyramid` (level shapes, downsampling, chunk encoding),
:mod:`~bidspack.io.omezarr.runner` (Dask), :mod:`~bidspack.io.omezarr.writer`,
:mod:`~bidspack.io.omezarr.reader` and :mod:`~bidspack.io.omezarr.validation`.
"""

from bidspack.io.omezarr.pyramid import (
    TASK_BYTES,
    Z_ISOTROPY,
    ImageKind,
    downsample_block,
    plan_pyramid,
    pyramid_shapes,
)
from bidspack.io.omezarr.reader import (
    NGFF_UNIT_TO_UM,
    detect_version,
    ome_zarr_scale_um,
    pixel_hash_of_zarr,
    read_attributes,
)
from bidspack.io.omezarr.store import ChunkFiles, ChunkStore, ShardFiles
from bidspack.io.omezarr.validation import ngff_schema_validators, validate_ome_zarr
from bidspack.io.omezarr.versions import (
    BLOSC,
    DEFAULT_VERSION,
    NGFF_VERSIONS,
    Level,
    NgffV04,
    NgffV05,
    NgffVersion,
    ngff_version,
)
from bidspack.io.omezarr.writer import STEP_TASKS, OmeZarrResult, write_ome_zarr

__all__ = [
    "BLOSC",
    "DEFAULT_VERSION",
    "NGFF_UNIT_TO_UM",
    "NGFF_VERSIONS",
    "STEP_TASKS",
    "TASK_BYTES",
    "Z_ISOTROPY",
    "ChunkFiles",
    "ChunkStore",
    "ImageKind",
    "Level",
    "NgffV04",
    "NgffV05",
    "NgffVersion",
    "OmeZarrResult",
    "ShardFiles",
    "detect_version",
    "downsample_block",
    "ngff_schema_validators",
    "ngff_version",
    "ome_zarr_scale_um",
    "pixel_hash_of_zarr",
    "plan_pyramid",
    "pyramid_shapes",
    "read_attributes",
    "validate_ome_zarr",
    "write_ome_zarr",
]
