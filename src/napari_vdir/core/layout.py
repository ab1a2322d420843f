"""Where an image's spatial and channel axes are, which channels are RGB colour, and what can be restored.

The one RGB rule (:meth:`Layout.of`): 3 colour channels (alpha excluded) go through the colour model together,
any other number one by one through the gray model. Whether a channel axis holds colour is decided by
``rgb``: None (``restore``'s rule: with 3+ dimensions a last axis of 3 is RGB, of 4 RGBA, of 2 two
channels), True (napari's ``layer.rgb``: the last axis is RGB or RGBA) or False (not colour: a last axis
of 2 or 4 is channels, as napari shows such a layer, and 3 channels are restored one by one). The restore
API, the plugin's layers and training all read layouts here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_vdir.core.errors import OptionTypeError, OptionValueError

COLOUR_CHANNELS = 3


def check_layout_options(channel_axis, alpha) -> None:
    """The kinds ``channel_axis`` and ``alpha`` may be, before any image is seen."""
    if alpha is not None and not isinstance(alpha, (bool, np.bool_)):
        raise OptionTypeError("alpha", "{alpha} must be None, True or False, got {value}", alpha)
    if channel_axis is True or not (channel_axis is None or channel_axis is False
                                     or isinstance(channel_axis, (int, np.integer))):
        raise OptionTypeError("channel_axis", "{channel_axis} must be None, False or an axis number, got {value}",
                              channel_axis)


def check_channel_axis(ndim: int, channel_axis: int) -> int:
    """The channel-axis rule: an axis of a 3+ dimensional image, the last one or one before the two spatial
    axes; returned non-negative."""
    if not -ndim <= channel_axis < ndim:
        raise OptionValueError("channel_axis", f"{{channel_axis=}} is out of range for a {ndim}-D array",
                               channel_axis)
    if ndim < 3:
        raise OptionValueError("channel_axis", "an image with a channel axis needs at least 3 dimensions",
                               channel_axis)
    axis = int(channel_axis) % ndim
    if axis >= ndim - 2 and axis != ndim - 1:
        raise OptionValueError("channel_axis", "{channel_axis=}: the channel axis must be the last axis or come "
                               "before the two spatial axes", channel_axis)
    return axis


@dataclass(frozen=True)
class Layout:
    """Where the channel axis of the caller's array is, whether the last channel is alpha and whether the
    channels are RGB colour.

    ``channel_axis=None`` (the default rule, see the module): a last axis of 2, 3 or 4 with 3+ dimensions
    (2 or 4 where ``rgb`` is False). ``channel_axis=False`` means no channel axis; an int names it.
    ``alpha``: None = only an auto-detected last axis of 4 is RGBA; True = the last channel is alpha
    (2 channels: gray + alpha, 4: RGBA); False = never. Alpha is carried over unchanged.
    """

    channel_axis: int | None
    ndim: int
    alpha: bool = False
    colour: bool = False  # the colour channels (alpha excluded) are RGB, restored together

    @classmethod
    def of(cls, shape: tuple[int, ...], channel_axis: int | None | bool = None, alpha: bool | None = None,
           rgb: bool | None = None) -> Layout:
        ndim = len(shape)
        check_layout_options(channel_axis, alpha)
        if rgb:
            if ndim < 3 or shape[-1] not in (3, 4):
                raise ValueError(f"an RGB image needs a last axis of 3 (or 4 with alpha), got shape {tuple(shape)}")
            return cls(ndim - 1, ndim, shape[-1] == 4, colour=True)
        if channel_axis is False:  # explicitly no channel axis, e.g. a gray stack whose last axis is 3 long
            if alpha:
                raise OptionValueError("alpha", "{alpha=True} needs a channel axis; give {channel_axis}", alpha)
            return cls(None, ndim)
        detected = False
        if channel_axis is not None:
            channel_axis = check_channel_axis(ndim, channel_axis)
        elif ndim >= 3 and shape[-1] in ((2, 3, 4) if rgb is None else (2, 4)):
            channel_axis, detected = ndim - 1, rgb is None  # (..., H, W, 3) is RGB, (..., 4) RGBA, as napari assumes
        else:
            if alpha:
                raise OptionValueError("alpha", f"{{alpha=True}} needs a channel axis; shape {tuple(shape)} has none "
                                       "(give {channel_axis})", alpha)
            return cls(None, ndim)
        n = shape[channel_axis]
        if alpha is None:
            alpha = detected and n == 4
        elif alpha and n not in (2, 4):
            raise OptionValueError("alpha", f"{{alpha=True}} needs 2 (gray + alpha) or 4 (RGBA) channels on "
                                   f"{{channel_axis}}, got {n}", alpha)
        return cls(channel_axis, ndim, bool(alpha), colour=rgb is None and n - bool(alpha) == COLOUR_CHANNELS)

    def to_planes(self, a):
        """-> (P, H, W, C) with C the channel count (1 when there is no channel axis), alpha included."""
        if self.channel_axis is None:
            a = a[..., None]
        else:
            a = np.moveaxis(a, self.channel_axis, -1)
        lead = a.shape[:-3]
        return a.reshape(-1, *a.shape[-3:]), lead

    def from_planes(self, planes, lead):
        a = planes.reshape(*lead, *planes.shape[1:])
        if self.channel_axis is None:
            return a[..., 0]
        return np.moveaxis(a, -1, self.channel_axis)

    def colour_channels(self, shape) -> int:
        """Channels that are restored (alpha excluded)."""
        n = 1 if self.channel_axis is None else shape[self.channel_axis]
        return n - self.alpha

    @property
    def model_channels(self) -> int:
        """Channels of the model that restores it: 3 for RGB, else 1 (channels go one by one)."""
        return COLOUR_CHANNELS if self.colour else 1

    @property
    def per_channel(self) -> bool:
        """True when the colour channels are restored (and normalised) one by one."""
        return self.channel_axis is not None and not self.colour

    def colour_part(self, a):
        """``a`` without its alpha channel (a view for numpy, lazy for dask)."""
        if not self.alpha:
            return a
        index = [slice(None)] * a.ndim
        index[self.channel_axis] = slice(0, a.shape[self.channel_axis] - 1)
        return a[tuple(index)]


EXACT_FLOAT64_INTEGERS = 2 ** 53


def check_image(image: np.ndarray) -> None:
    """Reject what cannot be restored, with a message the user can act on."""
    dt = image.dtype
    if dt == np.bool_ or np.issubdtype(dt, np.complexfloating) or not (np.issubdtype(dt, np.number)):
        raise TypeError(f"unsupported dtype {dt}: give uint8, uint16 (or another integer type) or float data")
    if image.size == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim < 2:
        raise ValueError(f"need at least a 2-D image, got shape {image.shape}")
    if np.issubdtype(dt, np.floating) and not np.isfinite(image).all():
        raise ValueError("the image contains NaN or inf values; replace them (e.g. np.nan_to_num) first")
    if np.issubdtype(dt, np.signedinteger) and image.min() < 0:
        raise ValueError(f"signed integer image ({dt}) has negative values; shift or rescale it to >= 0 first")
    if np.issubdtype(dt, np.integer) and dt.itemsize == 8 and int(image.max()) > EXACT_FLOAT64_INTEGERS:
        raise ValueError(f"{dt} values above 2^53 cannot be restored exactly (float64 cannot hold them); "
                         "rescale the data or convert it to float64 first")
