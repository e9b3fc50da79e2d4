"""Errors of the image tool, split by whose fault they are (python-tuf style).

Rules:
- `BundleRejected` and its subclasses: the *input* (image, bundle, manifest, signature) is bad or
  not for us. Nothing has been written when one of these is raised.
- `TargetRefused`: the *target* (device or file) is unfit (mounted, too small, no slot layout).
  Nothing has been written.
- `WriteFailed`: writing or the read-back check failed; the active slot is untouched.
- `BuildError`: the build host or a build step failed.
Messages are one line, name the artifact or path and never carry key material or PINs.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base class of every error the image tool reports."""


class BundleRejected(ImageError):
    """The image/bundle or its manifest was refused before anything was written."""


class BadSignature(BundleRejected):
    """The manifest signature does not verify under the pinned key."""


class WrongKey(BadSignature):
    """The manifest was signed by a key other than the pinned one."""


class BadManifest(BundleRejected):
    """The manifest is malformed, not canonical, or of an unknown format."""


class WrongProduct(BundleRejected):
    """The manifest is for another product or hardware."""


class Downgrade(BundleRejected):
    """The bundle's security_version is lower than the installed one (rollback refused)."""


class Truncated(BundleRejected):
    """An artifact is shorter (or longer) than the manifest says."""


class HashMismatch(BundleRejected):
    """An artifact's sha256 differs from the manifest."""


class VerityMismatch(BundleRejected):
    """The dm-verity tree or root hash differs from the manifest."""


class TargetRefused(ImageError):
    """The target cannot be written (mounted, too small, wrong layout)."""


class WriteFailed(ImageError):
    """Writing or the read-back verification failed."""


class BuildError(ImageError):
    """A build step failed."""
